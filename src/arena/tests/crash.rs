//! Crash consistency: updates stopped at every logged write (as a killed process leaves them)
//! are rolled back, and the undo log itself is distrusted.

use super::*;

/// An update abandoned halfway (as by a killed process) is undone by `roll_back`, at every
/// possible stopping point.
#[test]
fn rollback_undoes_an_interrupted_update_at_any_point() {
    let dir = TempDir::new();
    let arena = Arena::create("r", &dir.options(1 << 20)).unwrap();
    holes(&arena, "k", 50, |i| 100 + i * 7, 3);
    let r = arena.region;
    // Two entries whose last holder died before removing them: a small one (its block is
    // parked on removal) and a large one (freed to the heap).
    let small = zombie(&arena, "zs", 100);
    let large = zombie(&arena, "zl", 5000);
    // A freed block between two in use, which a smaller request splits into a tail of a
    // smaller class (the heap's last large block, carved, keeps its class).
    let hole = arena.allocate("hole", 5000).unwrap();
    let fence = arena.allocate("fence", 5000).unwrap();
    arena.deallocate(hole).unwrap();
    let before = (arena.entries().unwrap(), arena.stats().unwrap());
    let key = b"interrupted";
    let updates: [(&str, &Update); 5] = [
        ("insert into a parked block", &|tx| {
            directory::insert(tx, key, directory::hash(key), 300, 64).map(drop)
        }),
        ("insert carved from the last block", &|tx| {
            directory::insert(tx, key, directory::hash(key), 8000, 64).map(drop)
        }),
        ("insert into a freed block, split", &|tx| {
            directory::insert(tx, key, directory::hash(key), 3000, 64).map(drop)
        }),
        ("remove and park", &|tx| {
            directory::remove_dead(tx, small.0, small.1)
        }),
        ("remove and free", &|tx| {
            directory::remove_dead(tx, large.0, large.1)
        }),
    ];
    // The first insert really takes a parked block, the first removal really parks one.
    for (i, change) in [(0, -1i64), (3, 1)] {
        let parked = recycle::count_parked(&r).unwrap().0 as i64;
        let mut tx = Tx::begin(&r);
        updates[i].1(&mut tx).unwrap();
        let now = recycle::count_parked(&r).unwrap().0 as i64;
        assert_eq!(now - parked, change, "{}", updates[i].0);
        std::mem::forget(tx);
        lock::recover(&r).unwrap();
    }
    for (what, update) in updates {
        let mut completed = false;
        for stop_after in 1..80u64 {
            completed |= interrupted(&arena, stop_after, update);
            assert_as_before(
                &arena,
                &before,
                &format!("{what}, stopped at write {stop_after}"),
            );
        }
        assert!(completed, "{what}: every stopping point was tried");
    }
    arena.deallocate(fence).unwrap();
    arena.verify().unwrap();
}

/// A carve whose tail lies above the pristine mark stores the tail's words without logging
/// them. Interrupted at every logged write, in a fresh arena each time (the first attempt
/// raises the mark for good, and later ones would take the logged path), the rollback leaves a
/// well-formed heap, and the memory those words went to is zero when it is handed out again.
#[test]
fn an_interrupted_carve_of_fresh_memory_leaves_it_zero_at_any_point() {
    let dir = TempDir::new();
    let key = b"interrupted";
    let (mut completed, mut fresh_then_stopped) = (false, false);
    for stop_after in 1..40u64 {
        let arena = Arena::create(&format!("f{stop_after}"), &dir.options(1 << 20)).unwrap();
        let _held: Vec<_> = (0..5)
            .map(|i| arena.allocate(&format!("n{i}"), 100).unwrap())
            .collect();
        let before = (arena.entries().unwrap(), arena.stats().unwrap());
        let r = arena.region;
        let mark = r.load(l::PRISTINE_FROM).unwrap();
        let done = interrupted(&arena, stop_after, &|tx| {
            directory::insert(tx, key, directory::hash(key), 300, 64).map(drop)
        });
        completed |= done;
        fresh_then_stopped |= !done && r.load(l::PRISTINE_FROM).unwrap() > mark;
        assert_as_before(&arena, &before, &format!("stopped at write {stop_after}"));
        // Larger than the interrupted block: it covers where the tail's words went.
        let next = arena.allocate("after", 8000).unwrap();
        assert!(
            next.as_atomic_u64()
                .iter()
                .all(|w| w.load(Ordering::Relaxed) == 0),
            "stopped at write {stop_after}: stale bytes handed out"
        );
        arena.verify().unwrap();
    }
    assert!(completed, "every stopping point was tried");
    assert!(
        fresh_then_stopped,
        "some attempt stored the tail unlogged and was then interrupted"
    );
}

/// A new chunk of directory slots is carved from the top of the heap, above the pristine mark,
/// and its words are logged. An insert that carves one, interrupted at every logged write,
/// leaves the free memory at and above the mark zero, as later allocations take it to be.
#[test]
fn an_interrupted_carve_of_a_slot_chunk_leaves_fresh_memory_zero() {
    let dir = TempDir::new();
    let arena = Arena::create("s", &dir.options(1 << 20)).unwrap();
    // Every slot of the first chunk in use: the next insert carves a second chunk.
    let held: Vec<_> = (0..l::SLOTS_PER_CHUNK)
        .map(|i| arena.allocate(&format!("n{i}"), 100).unwrap())
        .collect();
    let r = arena.region;
    assert_eq!(r.load(l::SLOT_FREE).unwrap(), 0);
    let first_chunk = (0..l::SLOTS_PER_CHUNK)
        .map(|i| live_entry(&arena, &format!("n{i}")).0)
        .min()
        .unwrap();
    assert!(
        first_chunk > r.geometry().heap_end - 4096,
        "the first chunk lies at the heap's end"
    );
    // The header of a second chunk, just below the first.
    let second = first_chunk - 16 - (l::SLOTS_PER_CHUNK * l::ENTRY_SIZE + 16);
    let zero_from_mark = |below: u64, what: &str| {
        let mark = r.load(l::PRISTINE_FROM).unwrap();
        let stale = (mark..below)
            .step_by(8)
            .find(|&at| r.load(at).unwrap() != 0);
        assert_eq!(
            stale, None,
            "{what}: a word above the mark {mark} is not zero"
        );
    };
    zero_from_mark(first_chunk - 16, "before");
    let before = (arena.entries().unwrap(), arena.stats().unwrap());
    let key = b"interrupted";
    let (mut completed, mut carved_then_stopped) = (false, false);
    for stop_after in 1..120u64 {
        let mut tx = Tx::begin(&r);
        tx.limit = Some(stop_after);
        let done = directory::insert(&mut tx, key, directory::hash(key), 300, 64).is_ok();
        std::mem::forget(tx);
        completed |= done;
        carved_then_stopped |= !done && r.load(second + 8).unwrap() != 0;
        lock::recover(&r).unwrap();
        assert_as_before(&arena, &before, &format!("stopped at write {stop_after}"));
        zero_from_mark(first_chunk - 16, &format!("stopped at write {stop_after}"));
    }
    assert!(completed, "every stopping point was tried");
    assert!(
        carved_then_stopped,
        "some attempt was stopped after carving the chunk"
    );
    // Made for real: the new slot lies in a second chunk just below the first.
    let b = arena.allocate("interrupted", 300).unwrap();
    let slot = live_entry(&arena, "interrupted").0;
    assert_eq!(slot, second + 16);
    zero_from_mark(second, "after the insert");
    arena.deallocate(b).unwrap();
    drop(held);
    arena.verify().unwrap();
}

/// The undo log holds the largest update: an insert that carves a chunk of slots and splits a
/// directory group, after the locked lookup removed a dead entry of the same name (a removal
/// that may merge groups), all in one update.
#[test]
fn the_largest_updates_fit_in_the_undo_log() {
    let dir = TempDir::new();
    let arena = Arena::create("l", &dir.options(64 << 20)).unwrap();
    let r = arena.region;
    let (mut insert_max, mut chunk_inserts) = (0, 0);
    for i in 0..3000u64 {
        let key = format!("n{i}");
        let chunk_due = r.load(l::SLOT_FREE).unwrap() == 0;
        let mut tx = Tx::begin(&r);
        // Sizes beyond the park classes: every insert carves a block from the heap.
        directory::insert(
            &mut tx,
            key.as_bytes(),
            directory::hash(key.as_bytes()),
            2000,
            64,
        )
        .unwrap();
        insert_max = insert_max.max(tx.logged());
        chunk_inserts += u64::from(chunk_due);
        tx.commit();
    }
    assert!(
        chunk_inserts >= 3000 / l::SLOTS_PER_CHUNK,
        "{chunk_inserts}"
    );
    // Removals down to a few names: the directory merges groups back on the way.
    let mut removal_max = 0;
    for i in 0..3000u64 {
        let key = format!("n{i}");
        let (e, generation) = live_entry(&arena, &key);
        assert!(directory::drop_reference(&r, e, generation).unwrap());
        let mut tx = Tx::begin(&r);
        directory::remove_dead(&mut tx, e, generation).unwrap();
        removal_max = removal_max.max(tx.logged());
        tx.commit();
    }
    arena.verify().unwrap();
    println!("largest insert {insert_max} words, largest removal {removal_max}");
    assert!(
        insert_max + removal_max <= l::UNDO_CAPACITY,
        "an insert logs up to {insert_max} words and a removal {removal_max}: more than the \
         log's {}",
        l::UNDO_CAPACITY
    );
}

/// The counters that updates keep outside the undo log are whatever a process killed after its
/// commit point left; the recovery recounts them from the directory and the park lists.
#[test]
fn a_recovery_recounts_the_unlogged_counters() {
    let dir = TempDir::new();
    let arena = Arena::create("c", &dir.options(1 << 20)).unwrap();
    holes(&arena, "n", 40, |i| 10 + i * 30, 4);
    let _zombie = zombie(&arena, "z", 77);
    let stats = arena.stats().unwrap();
    let report = arena.verify().unwrap();
    assert!(report.parked_blocks > 0 && stats.live_blocks == 31);
    let r = arena.region;
    for off in [l::LIVE_BLOCKS, l::REQUESTED, l::PARKED_BYTES] {
        r.store(off, 0xdead_beef).unwrap();
    }
    assert!(
        arena.verify().is_err(),
        "the scrambled counters are noticed"
    );
    // The park lists' hints (their heads' and tails' blocks) too: wrong hints only misorder
    // takes, and the recovery sets them again.
    let lists: Vec<u64> = (0..l::PARK_CLASSES)
        .flat_map(|c| (0..l::PARK_LISTS).map(move |i| recycle::head_of(c, i)))
        .filter(|&at| r.load(at).unwrap() != 0)
        .collect();
    assert!(!lists.is_empty());
    for &at in &lists {
        r.store(at + 16, 0xdead_beef).unwrap();
        r.store(at + 24, 1).unwrap();
    }
    lock::recover(&r).unwrap();
    assert_eq!(arena.stats().unwrap(), stats);
    assert_eq!(arena.verify().unwrap(), report);
    for &at in &lists {
        let block = |slot| directory::read_slot(&r, slot).unwrap().block();
        let (head, tail) = (r.load(at).unwrap(), r.load(at + 8).unwrap());
        assert_eq!(r.load(at + 16).unwrap(), block(head));
        assert_eq!(r.load(at + 24).unwrap(), block(tail));
    }
}

/// A crafted undo log that would restore words inside the lock (a write-what-where for anyone
/// who can make the lock look abandoned) is refused as a whole: nothing is written, the caller
/// gets `Corrupted`, and so does every later locker.
#[test]
fn an_undo_log_pointing_into_the_lock_is_refused() {
    let dir = TempDir::new();
    let arena = Arena::create(
        "u",
        &dir.options(1 << 20)
            .lock_timeout(std::time::Duration::from_millis(200)),
    )
    .unwrap();
    let keep = arena.allocate("kept", 64).unwrap();
    let r = arena.region;
    let heap_word = keep.offset();
    // A valid first entry, then one aimed at the mutex.
    r.store(l::UNDO_ENTRIES, heap_word).unwrap();
    r.store(l::UNDO_ENTRIES + 8, 0xdead).unwrap();
    r.store(l::UNDO_ENTRIES + 16, l::LOCK + 16).unwrap();
    r.store(l::UNDO_ENTRIES + 24, 0x4141_4141).unwrap();
    r.store(l::UNDO_LEN, 2).unwrap();
    let lock_before: Vec<u64> = (0..8).map(|i| r.header(l::LOCK + i * 8)).collect();
    let err = r.roll_back().unwrap_err();
    assert_eq!(err.code(), crate::ErrorCode::Corrupted, "{err}");
    assert!(err.to_string().contains("no update changes"), "{err}");
    let lock_after: Vec<u64> = (0..8).map(|i| r.header(l::LOCK + i * 8)).collect();
    assert_eq!(lock_before, lock_after, "the mutex was written");
    assert_ne!(
        r.load(heap_word).unwrap(),
        0xdead,
        "a valid entry was applied anyway"
    );
    // The same through the lock: a holder that "died" (FUTEX_OWNER_DIED in the lock word).
    // SAFETY: test only; the lock word is the first u32 of glibc's mutex, no thread holds it.
    unsafe {
        let word = arena.mutex(l::LOCK).cast::<std::sync::atomic::AtomicU32>();
        (*word).store(0x4000_0000, std::sync::atomic::Ordering::SeqCst);
    }
    for _ in 0..2 {
        // A new name: the update takes the lock (finding "kept" would not).
        let err = arena.allocate("other", 64).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Corrupted, "{err}");
    }
    assert_eq!(r.header(l::LOCK + 16), lock_before[2]);
    assert_eq!(
        arena.stats().unwrap_err().code(),
        crate::ErrorCode::Corrupted
    );
    drop(arena); // releasing what it holds fails quietly; the handle still goes
}

/// An update may write only heap metadata, directory and heap words.
#[test]
fn updates_cannot_write_locks_or_geometry() {
    let dir = TempDir::new();
    let arena = Arena::create("w", &dir.options(1 << 20)).unwrap();
    let r = arena.region;
    for off in [
        l::LOCK,
        l::USER_LOCK + 8,
        l::BUCKET_COUNT,
        l::HEAP_END,
        l::UNDO_LEN,
        l::SIZE,
    ] {
        let mut tx = Tx::begin(&r);
        let err = tx.set(off, 1).unwrap_err();
        assert_eq!(
            err.code(),
            crate::ErrorCode::Corrupted,
            "offset {off}: {err}"
        );
    }
    let mut tx = Tx::begin(&r);
    tx.set(l::USED, r.header(l::USED)).unwrap();
    tx.commit();
    arena.verify().unwrap();
}

/// A process killed after dropping a block's last reference (lock-free) but before removing
/// the entry (under the lock) leaves an entry without references: the directory still
/// verifies, readers do not hand it out, and the first locked operation that meets the name
/// removes it.
#[test]
fn an_entry_left_without_references_is_removed_when_met() {
    let dir = TempDir::new();
    let arena = Arena::create("z", &dir.options(1 << 20)).unwrap();
    // What the killed process did: its last reference dropped, nothing else.
    zombie(&arena, "zombie", 100);
    arena.verify().unwrap();
    assert_eq!(arena.stats().unwrap().live_blocks, 1, "still listed");
    // A lock-free reader does not trust it and asks under the lock, which removes it.
    assert!(arena.find("zombie").unwrap().is_none());
    assert_eq!(arena.stats().unwrap().live_blocks, 0, "removed when met");
    arena.verify().unwrap();
    // Made again with another size: the dead entry goes, a new one is created.
    let again = arena.allocate("zombie", 300).unwrap();
    assert!(again.created());
    let entries = arena.entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].size, entries[0].refcount), (300, 1));
    arena.deallocate(again).unwrap();
    arena.verify().unwrap();
    assert_eq!(arena.stats().unwrap().live_blocks, 0);
}

/// An insert stopped after any of its writes (as by a killed process) is never handed out by
/// a lock-free lookup, before or after the recovery rolls it back, and never makes another
/// name look missing.
#[test]
fn an_interrupted_insert_is_invisible_to_lock_free_readers() {
    let dir = TempDir::new();
    let arena = Arena::create("p", &dir.options(1 << 20)).unwrap();
    let kept = arena.allocate("kept", 64).unwrap();
    let r = arena.region;
    let key = b"half";
    let h = directory::hash(key);
    for stop_after in 1..40u64 {
        let mut tx = Tx::begin(&r);
        tx.limit = Some(stop_after);
        let _ = directory::insert(&mut tx, key, h, 200, 64);
        std::mem::forget(tx); // killed here: no commit, no rollback yet
        assert!(
            !matches!(directory::lookup_fast(&r, key, h), directory::Fast::Hit(_)),
            "stopped after write {stop_after}: a lock-free reader got the uncommitted entry"
        );
        // Another name is never reported missing meanwhile: found, or (when its chain shares
        // the group) left to the lock, where the recovery runs first.
        let kept_key = b"kept";
        assert!(!matches!(
            directory::lookup_fast(&r, kept_key, directory::hash(kept_key)),
            directory::Fast::Miss { .. }
        ));
        lock::recover(&r).unwrap();
        let k = arena.find("kept").unwrap().unwrap();
        arena.deallocate(k).unwrap();
        assert!(arena.find("half").unwrap().is_none());
        assert_eq!(arena.lookup("kept").unwrap().unwrap().refcount, 1);
        arena
            .verify()
            .unwrap_or_else(|e| panic!("after stopping at write {stop_after}: {e}"));
    }
    arena.deallocate(kept).unwrap();
}

/// Each way a removal parks its slot (after a list's tail, before its head, as a new list in
/// its process's own list) and a take of the lowest head, stopped at every logged write, is
/// rolled back to the lists as they were: the same heads and tails, in a heap that verifies.
/// The blocks' offsets beside them are hints, left to the next update and the recovery.
#[test]
fn an_interrupted_park_or_take_leaves_the_lists_as_they_were() {
    let dir = TempDir::new();
    let arena = Arena::create("p", &dir.options(1 << 20)).unwrap();
    // Fresh blocks come in address order: low < kept < high.
    let low = zombie(&arena, "low", 100);
    let kept: Vec<_> = (0..4)
        .map(|i| arena.allocate(&format!("kept{i}"), 100).unwrap())
        .collect();
    let high = zombie(&arena, "high", 100);
    let mut kept = kept.into_iter();
    let _first = kept.next();
    arena.deallocate(kept.next().unwrap()).unwrap();
    arena.deallocate(kept.next().unwrap()).unwrap();
    let r = arena.region;
    let class = (0..l::PARK_CLASSES)
        .find(|&c| r.load(recycle::head_of(c, 0)).unwrap() != 0)
        .expect("the creator's list holds the two");
    let ends = || -> Vec<u64> {
        (0..l::PARK_LISTS)
            .flat_map(|i| {
                let at = recycle::head_of(class, i);
                let head = r.load(at).unwrap();
                [
                    head,
                    if head == 0 {
                        0
                    } else {
                        r.load(recycle::tail_of(class, i)).unwrap()
                    },
                ]
            })
            .collect()
    };
    let (before, lists) = ((arena.entries().unwrap(), arena.stats().unwrap()), ends());
    let key = b"interrupted";
    let updates: [(&str, u64, &Update); 4] = [
        ("park after the tail", 0, &|tx| {
            directory::remove_dead(tx, high.0, high.1)
        }),
        ("park before the head", 0, &|tx| {
            directory::remove_dead(tx, low.0, low.1)
        }),
        ("park as a new list", 1, &|tx| {
            directory::remove_dead(tx, high.0, high.1)
        }),
        ("take the lowest head", 0, &|tx| {
            directory::insert(tx, key, directory::hash(key), 100, 64).map(drop)
        }),
    ];
    for (what, attacher, update) in updates {
        // Run whole, each takes the path it names.
        let mut tx = Tx::begin(&r).by(attacher);
        update(&mut tx).unwrap();
        let after = ends();
        match what {
            "park after the tail" => assert_eq!(after[1], high.0, "{what}"),
            "park before the head" => assert_eq!(after[0], low.0, "{what}"),
            "park as a new list" => assert_eq!(after[2..4], [high.0, high.0], "{what}"),
            _ => assert_eq!(after[0], lists[1], "{what}: the second parked is the head"),
        }
        std::mem::forget(tx);
        lock::recover(&r).unwrap();
        let mut completed = false;
        for stop_after in 1..40u64 {
            let mut tx = Tx::begin(&r).by(attacher);
            tx.limit = Some(stop_after);
            completed |= update(&mut tx).is_ok();
            std::mem::forget(tx);
            lock::recover(&r).unwrap();
            let at = format!("{what}, stopped at write {stop_after}");
            assert_as_before(&arena, &before, &at);
            assert_eq!(ends(), lists, "{at}");
        }
        assert!(completed, "{what}: every stopping point was tried");
    }
}

/// A lock whose mutex another process damaged into another kind (priority-protect here,
/// where glibc would abort the process on an assertion) is refused with `Corrupted` before
/// any pthread call, for the metadata lock and the user lock alike.
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
#[test]
fn a_damaged_mutex_kind_is_an_error() {
    let dir = TempDir::new();
    let arena = Arena::create("k", &dir.options(1 << 20)).unwrap();
    let b = arena.allocate("before", 64).unwrap();
    let r = arena.region;
    for lock in [l::LOCK, l::USER_LOCK] {
        let kind = r.word32(lock + 16);
        let good = kind.load(Ordering::Relaxed);
        // glibc's PTHREAD_MUTEX_PRIO_PROTECT_NP bit (64) in the kind word.
        kind.store(good | 0x40, Ordering::Relaxed);
        let err = if lock == l::LOCK {
            arena.allocate("after", 64).map(drop).unwrap_err()
        } else {
            arena
                .lock_user(Duration::from_millis(50))
                .map(drop)
                .unwrap_err()
        };
        assert_eq!(err.code(), ErrorCode::Corrupted, "{err}");
        assert!(err.to_string().contains("kind word"), "{err}");
        kind.store(good, Ordering::Relaxed);
    }
    arena.deallocate(b).unwrap();
    drop(arena.lock_user(Duration::from_millis(50)).unwrap());
    arena.verify().unwrap();
}
