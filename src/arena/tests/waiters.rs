//! The arena lock's waiters: giving up when asked, and a stale holder word.

use super::*;

/// A waiter that may give up (a lock-free reader whose missing name may be being created by
/// the holder) leaves the wait as soon as it is told to, without running its update; one that
/// is never told to waits for the holder and then runs it.
#[test]
fn a_waiter_gives_up_when_asked_and_otherwise_gets_the_lock() {
    use std::sync::atomic::{AtomicBool, AtomicU32};
    let dir = TempDir::new();
    let arena = Arena::create("give-up", &dir.options(1 << 20)).unwrap();
    let (inside, release) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let holder = s.spawn(|| {
            arena
                .locked(|_| {
                    inside.store(true, Ordering::Release);
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                    while !release.load(Ordering::Acquire) {
                        assert!(std::time::Instant::now() < deadline, "never released");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Ok(())
                })
                .unwrap()
        });
        while !inside.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let asked = AtomicU32::new(0);
        let ran = AtomicBool::new(false);
        let outcome = arena
            .locked_unless(
                || (asked.fetch_add(1, Ordering::Relaxed) == 2).then_some("the name appeared"),
                |_| {
                    ran.store(true, Ordering::Relaxed);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(outcome, Err("the name appeared"));
        assert_eq!(
            asked.load(Ordering::Relaxed),
            3,
            "asked after each failed try"
        );
        assert!(
            !ran.load(Ordering::Relaxed),
            "the update of a waiter that gave up ran"
        );
        // Released while the second waiter spins or sleeps: it gets the lock and runs.
        let releaser = s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            release.store(true, Ordering::Release);
        });
        let outcome = arena
            .locked_unless(|| None::<()>, |_| Ok(ran.swap(true, Ordering::Relaxed)))
            .unwrap();
        assert_eq!(outcome, Ok(false));
        releaser.join().unwrap();
        holder.join().unwrap();
    });
    arena.verify().unwrap();
}

/// Waiters only read the holder word while it names a holder (so as not to take the lock's
/// line from the holder), but the word is a hint: one left set over a free lock, by a holder
/// killed at the wrong instant or by damage, must not keep anyone from the lock.
#[test]
fn a_stale_holder_word_does_not_keep_the_lock() {
    let dir = TempDir::new();
    let arena = Arena::create("stale-holder", &dir.options(1 << 20)).unwrap();
    arena
        .region
        .word32(l::LOCK_HOLDER)
        .store(u32::MAX, Ordering::Release);
    // Taken while spinning (within the rounds that only read the word, plus one that tries),
    // not left to the kernel's timed wait after the spin.
    let mut asked = 0;
    let outcome = arena
        .locked_unless(
            || {
                asked += 1;
                None::<()>
            },
            |_| Ok(()),
        )
        .unwrap();
    assert_eq!(outcome, Ok(()));
    assert!(
        asked < 8,
        "the free lock was tried only after {asked} rounds"
    );
    let b = arena.allocate("after", 64).unwrap();
    arena.deallocate(b).unwrap();
    assert_eq!(
        arena.region.word32(l::LOCK_HOLDER).load(Ordering::Acquire),
        0
    );
    arena.verify().unwrap();
}
