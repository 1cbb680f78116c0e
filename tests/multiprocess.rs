//! Real processes sharing one arena, without MPI: children are this same binary started with
//! `NODESHM_ROLE` set.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nodeshm::arena::{Arena, Options, Unlink};
use nodeshm::{Error, ErrorCode};

const NAMES: usize = 1000;
const CHILDREN: u64 = 4;

use support::{spawn_role as spawn, unique};

fn size_of(i: usize) -> u64 {
    64 + (i as u64 % 37) * 24
}

/// Waits until `counter` reaches `target` (bounded).
fn wait_for(counter: &AtomicU64, target: u64) {
    let start = Instant::now();
    while counter.load(Ordering::Acquire) < target {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "barrier timed out"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Child: attach, allocate the same names, write its share, check everyone's, report offsets.
fn role_same_names() {
    let arena = Arena::attach(&support::role_arg(), Duration::from_secs(10)).unwrap();
    let sync = arena.allocate("sync", 64).unwrap();
    let words = sync.as_atomic_u64();
    let me = words[0].fetch_add(1, Ordering::AcqRel); // arrival order = child index
    let blocks: Vec<_> = (0..NAMES)
        .map(|i| arena.allocate(&format!("name-{i}"), size_of(i)).unwrap())
        .collect();
    for (i, b) in blocks.iter().enumerate() {
        if i as u64 % CHILDREN == me {
            for (k, w) in b.as_atomic_u64().iter().enumerate() {
                w.store((i * 1000 + k) as u64, Ordering::Release);
            }
        }
    }
    words[1].fetch_add(1, Ordering::AcqRel);
    wait_for(&words[1], CHILDREN);
    for (i, b) in blocks.iter().enumerate() {
        for (k, w) in b.as_atomic_u64().iter().enumerate() {
            assert_eq!(
                w.load(Ordering::Acquire),
                (i * 1000 + k) as u64,
                "name-{i} word {k}"
            );
        }
        println!("name-{i} {}", b.offset());
    }
    println!("done");
    // Hold the references until the parent has counted them.
    wait_for(&words[2], 1);
    for b in blocks {
        arena.deallocate(b).unwrap();
    }
    arena.deallocate(sync).unwrap();
}

fn four_processes_share_names_offsets_and_contents() {
    let name = unique("same");
    let owner = Arena::create(&name, &Options::new(16 << 20).unlink(Unlink::OnLastDetach)).unwrap();
    let sync = owner.allocate("sync", 64).unwrap();
    let mut children: Vec<Child> = (0..CHILDREN).map(|_| spawn("same_names", &name)).collect();
    let mut reports = Vec::new();
    for child in &mut children {
        let lines: Vec<String> = BufReader::new(child.stdout.as_mut().unwrap())
            .lines()
            .map(|l| l.unwrap())
            .take_while(|l| l != "done")
            .collect();
        assert_eq!(lines.len(), NAMES, "a child reported {} names", lines.len());
        reports.push(lines);
    }
    assert!(
        reports.iter().all(|r| *r == reports[0]),
        "children saw different offsets"
    );
    let entries = owner.entries().unwrap();
    assert_eq!(entries.len(), NAMES + 1);
    for e in &entries {
        let expected = if e.name == "sync" {
            CHILDREN + 1
        } else {
            CHILDREN
        };
        assert_eq!(e.refcount, expected, "refcount of {}", e.name);
        if e.name != "sync" {
            assert!(reports[0].contains(&format!("{} {}", e.name, e.offset)));
        }
    }
    sync.as_atomic_u64()[2].store(1, Ordering::Release);
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a child failed");
    }
    // Children released everything: only the owner's "sync" is left.
    let stats = owner.stats().unwrap();
    assert_eq!(stats.live_blocks, 1);
    owner.deallocate(sync).unwrap();
    let report = owner.verify().unwrap();
    let after = owner.stats().unwrap();
    assert_eq!((after.live_blocks, after.requested), (0, 0));
    // All that stays in use are the directory's slots (64 bytes a name, at the peak of 1,001
    // names), which are kept for reuse.
    assert_eq!(report.used_bytes, after.used);
    assert!(
        after.used <= 1001 * 64 + 64 * 32,
        "{} bytes in use",
        after.used
    );
    drop(owner);
    assert!(
        support::leftovers(&name).is_empty(),
        "on-last-detach left the name behind"
    );
}

/// Child: attach, stop halfway through an update while holding the lock.
fn role_halt_holding_lock() {
    let arena = Arena::attach(&support::role_arg(), Duration::from_secs(10)).unwrap();
    arena
        .__halt_mid_update("half-made", 4096, || println!("halted"))
        .unwrap();
}

/// Child: attaches and waits to be killed (or told to leave on stdin closing).
fn role_attach_and_wait() {
    let arena = Arena::attach(&support::role_arg(), Duration::from_secs(10)).unwrap();
    let _b = arena.allocate("held by a child", 100).unwrap();
    println!("attached");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line); // returns when the parent closes stdin
    drop(arena);
}

/// A killed attacher does not keep an `OnLastDetach` name alive: the arena records who is
/// attached (pid and start time), and the last live process to detach unlinks it.
fn killed_attacher_does_not_keep_the_name() {
    let name = unique("killed-attacher");
    let owner = Arena::create(&name, &Options::new(1 << 20).unlink(Unlink::OnLastDetach)).unwrap();
    let _cleanup = Unlinker(&name);
    let spawn_attacher = || {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(support::ROLE_ENV, format!("attach_and_wait:{name}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert_eq!(support::first_line(&mut child), "attached");
        child
    };
    let mut killed = spawn_attacher();
    let mut leaving = spawn_attacher();
    let recorded = owner.info().attachers;
    for pid in [std::process::id(), killed.id(), leaving.id()] {
        assert!(
            recorded.iter().any(|&(p, _)| p == pid),
            "{pid} not in {recorded:?}"
        );
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    drop(leaving.stdin.take()); // the other child detaches normally
    assert!(leaving.wait().unwrap().success());
    assert_eq!(
        support::leftovers(&name).len(),
        1,
        "the owner is still attached"
    );
    drop(owner);
    assert!(
        support::leftovers(&name).is_empty(),
        "the killed attacher kept {name} alive"
    );
}

/// Child: takes the user lock and keeps it until killed.
fn role_hold_user_lock() {
    let arena = Arena::attach(&support::role_arg(), Duration::from_secs(10)).unwrap();
    let _held = arena.lock_user(Duration::from_secs(10)).unwrap();
    println!("locked");
    std::thread::sleep(Duration::from_secs(60));
}

/// The user lock records its holder: a waiter that times out is told who holds it, and after the
/// holder is killed the next locker gets it and learns that the holder died.
fn user_lock_names_its_holder_and_survives_its_death() {
    let name = unique("userlock");
    let owner = Arena::create(&name, &Options::new(1 << 20)).unwrap();
    let _cleanup = Unlinker(&name);
    let mut child = spawn("hold_user_lock", &name);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let err = owner.lock_user(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("held by pid {}", child.id())),
        "{err}"
    );
    // Unlocking a lock this thread does not hold is an error, not a release.
    // SAFETY: no guard of this thread holds the user lock.
    let err = unsafe { owner.force_unlock_user() }.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotHeld, "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    let guard = owner.lock_user(Duration::from_secs(10)).unwrap();
    assert!(guard.previous_owner_died());
    drop(guard);
    let again = owner.lock_user(Duration::from_secs(1)).unwrap();
    assert!(!again.previous_owner_died());
    // A leaked guard is released by force_unlock_user on the same thread.
    again.leak();
    // SAFETY: the guard was leaked; no guard of this thread holds the lock.
    unsafe { owner.force_unlock_user() }.unwrap();
    drop(owner.lock_user(Duration::from_secs(1)).unwrap());
}

fn kill_9_while_holding_the_lock_recovers() {
    let name = unique("kill");
    let owner = Arena::create(
        &name,
        &Options::new(4 << 20).lock_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let _cleanup = Unlinker(&name);
    let before = owner.allocate("before", 1000).unwrap();
    let stats_before = owner.stats().unwrap();
    let mut child = spawn("halt_holding_lock", &name);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "halted");
    // Another process blocks on the lock now; it must go on once the holder is killed.
    let waiter = std::thread::spawn({
        let name = name.clone();
        move || {
            let other = Arena::attach(&name, Duration::from_secs(5)).unwrap();
            let t = Instant::now();
            let b = other.allocate("after", 2000).map(|b| b.offset());
            let waited = t.elapsed();
            let seen = other.lookup("after").unwrap().map(|e| e.refcount);
            (b.map(|_| seen), waited)
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let (after, waited) = waiter.join().unwrap();
    assert_eq!(
        after.unwrap(),
        Some(1),
        "the waiter allocated after the recovery"
    );
    assert!(
        waited < Duration::from_secs(10),
        "the waiter took {waited:?}"
    );
    let stats = owner.stats().unwrap();
    assert_eq!(stats.recoveries, 1);
    assert!(
        owner.lookup("half-made").unwrap().is_none(),
        "the interrupted update was undone"
    );
    assert!(owner.lookup("before").unwrap().is_some());
    assert_eq!(
        stats.live_blocks, stats_before.live_blocks,
        "the waiter released its block on drop"
    );
    owner.verify().unwrap();
    owner.deallocate(before).unwrap();
    // The killed child never detached, so on-last-detach cannot fire: that is what `nodeshm gc`
    // is for. Here the test removes the name itself.
    owner.unlink().unwrap();
}

const HOT: u64 = 8;

/// A value that says which name a block belongs to.
fn stamp(k: u64) -> u64 {
    0x5EED_0000_0000 + k
}

/// Child: hammers a few names with allocate, find and deallocate (lock-free and locked paths
/// both) until told to stop, checking that every block it gets is the one of its name.
fn role_churn() {
    let arena = Arena::attach(&support::role_arg(), Duration::from_secs(10)).unwrap();
    let ctl = arena.find("ctl").unwrap().expect("the parent made ctl");
    let stop = &ctl.as_atomic_u64()[0];
    let mut x = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut held = Vec::new();
    println!("ready");
    while stop.load(Ordering::Acquire) == 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = x % HOT;
        let name = format!("hot-{k}");
        if held.len() >= 4 || (x >> 8) % 3 == 0 {
            if !held.is_empty() {
                let (_, b) = held.swap_remove((x >> 16) as usize % held.len());
                arena.deallocate(b).unwrap();
            }
            continue;
        }
        let got = if (x >> 8) % 3 == 1 {
            arena.find(&name).unwrap()
        } else {
            Some(arena.allocate(&name, 64).unwrap())
        };
        if let Some(b) = got {
            let word = &b.as_atomic_u64()[0];
            if b.created() {
                word.store(stamp(k), Ordering::Release);
            }
            let seen = word.load(Ordering::Acquire);
            assert!(
                seen == 0 || seen == stamp(k),
                "{name} is another name's block ({seen:#x})"
            );
            held.push((k, b));
        }
    }
    for (_, b) in held {
        arena.deallocate(b).unwrap();
    }
    println!("done");
}

/// Processes taking and dropping references on the same names, without the lock for existing
/// names, while some are killed with SIGKILL at random points (holding references, inside a
/// compare-and-swap, holding the lock halfway through an update): the directory stays
/// consistent, every name still works, and no process is handed another name's block.
fn killed_processes_leave_the_directory_consistent() {
    let name = unique("churn");
    let owner = Arena::create(
        &name,
        &Options::new(8 << 20).lock_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let _cleanup = Unlinker(&name);
    let ctl = owner.allocate("ctl", 64).unwrap();
    let start = |name: &str| {
        let mut c = spawn("churn", name);
        assert_eq!(support::first_line(&mut c), "ready");
        c
    };
    let mut children: Vec<Child> = (0..3).map(|_| start(&name)).collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(5 + x % 40));
        let victim = (x >> 20) as usize % children.len();
        let mut c = children.swap_remove(victim);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        c.wait().unwrap();
        children.push(start(&name));
    }
    ctl.as_atomic_u64()[0].store(1, Ordering::Release);
    for mut c in children {
        assert_eq!(support::first_line(&mut c), "done");
        assert!(c.wait().unwrap().success());
    }
    owner.verify().unwrap();
    for k in 0..HOT {
        let b = owner.allocate(&format!("hot-{k}"), 64).unwrap();
        let seen = b.as_atomic_u64()[0].load(Ordering::Acquire);
        assert!(seen == 0 || seen == stamp(k), "hot-{k} holds {seen:#x}");
        let f = owner.find(&format!("hot-{k}")).unwrap().unwrap();
        assert_eq!(f.offset(), b.offset());
        owner.deallocate(f).unwrap();
        owner.deallocate(b).unwrap();
    }
    owner.verify().unwrap();
    owner.deallocate(ctl).unwrap();
    owner.unlink().unwrap();
}

/// Removes a test arena's name even when the test fails halfway.
struct Unlinker<'a>(&'a str);

impl Drop for Unlinker<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(self.0));
    }
}

fn attach_errors_are_clear() {
    let tmp = support::TempDir::new("attach");
    let dir = tmp.0.clone();
    let opts = |t: u64| {
        Options::new(0)
            .dir(&dir)
            .attach_timeout(Duration::from_millis(t))
    };

    let err = Arena::attach_with("never-there", &opts(300)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(err.to_string().contains("to appear"), "{err}");

    let random: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1)
        .collect();
    std::fs::write(dir.join("random"), &random).unwrap();
    let err = Arena::attach_with("random", &opts(300)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAnArena, "{err}");
    assert!(err.to_string().contains("not the nodeshm magic"), "{err}");

    std::fs::write(dir.join("zeros"), vec![0u8; 100_000]).unwrap();
    let err = Arena::attach_with("zeros", &opts(300)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAnArena, "{err}");
    assert!(
        err.to_string().contains("never finished initialising"),
        "{err}"
    );

    std::fs::write(dir.join("short"), b"NODESHM").unwrap();
    let err = Arena::attach_with("short", &opts(300)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAnArena, "{err}");
    assert!(
        err.to_string().contains("fewer than an arena header"),
        "{err}"
    );

    let create = |name: &str| {
        Arena::create(name, &Options::new(1 << 20).dir(&dir).unlink(Unlink::Never)).unwrap()
    };
    drop(create("version"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("version"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &99u32.to_ne_bytes(), 8).unwrap();
    let err = Arena::attach_with("version", &opts(300)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Incompatible, "{err}");
    assert!(err.to_string().contains("layout version 99"), "{err}");

    drop(create("damaged"));
    let damaged = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("damaged"))
        .unwrap();
    // The directory size word (a power of two) becomes 3.
    let bucket_count_offset = 64;
    std::os::unix::fs::FileExt::write_all_at(&damaged, &3u64.to_ne_bytes(), bucket_count_offset)
        .unwrap();
    let err = Arena::attach_with("damaged", &opts(300)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAnArena, "{err}");
    assert!(
        err.to_string().contains("geometry is inconsistent"),
        "{err}"
    );

    drop(create("truncated"));
    file.set_len(0).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("truncated"))
        .unwrap();
    file.set_len(300_000).unwrap();
    let err = Arena::attach_with("truncated", &opts(300)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAnArena, "{err}");
    assert!(
        err.to_string()
            .contains("the header says 1048576 bytes, the file has 300000"),
        "{err}"
    );
}

fn full_backing_directory_is_an_error_not_a_sigbus() {
    if !support::is_root() {
        println!("skipped: needs root (mounts a 16 MiB tmpfs)");
        return;
    }
    let tmpfs = support::Mount::tmpfs("16m");
    let err = Arena::create("big", &Options::new(64 << 20).dir(&tmpfs.0)).unwrap_err();
    match &err {
        Error::NoSpaceInBacking {
            requested,
            available,
            ..
        } => {
            assert_eq!(*requested, 64 << 20);
            assert!(*available <= 16 << 20);
        }
        other => panic!("expected NoSpaceInBacking, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("64.0 MiB") && msg.contains("16.0 MiB"),
        "{msg}"
    );
    assert!(
        std::fs::read_dir(&tmpfs.0).unwrap().next().is_none(),
        "a failed create left a file"
    );
    // A smaller one fits, and filling it is an allocation error, never a SIGBUS.
    let arena = Arena::create("small", &Options::new(8 << 20).dir(&tmpfs.0)).unwrap();
    let b = arena.allocate("all", 7 << 20).unwrap();
    for w in b.as_atomic_u64() {
        w.store(1, Ordering::Relaxed);
    }
    assert_eq!(
        arena.allocate("more", 4 << 20).unwrap_err().code(),
        ErrorCode::OutOfSpace
    );
}

fn unlink_policies() {
    let after = unique("after");
    let owner = Arena::create(
        &after,
        &Options::new(1 << 20).unlink(Unlink::AfterAttach { peers: 2 }),
    )
    .unwrap();
    let p1 = Arena::attach(&after, Duration::from_secs(5)).unwrap();
    assert_eq!(
        support::leftovers(&after).len(),
        1,
        "still named after 1 of 2 peers"
    );
    let p2 = Arena::attach(&after, Duration::from_secs(5)).unwrap();
    assert!(
        support::leftovers(&after).is_empty(),
        "unlinked once both peers attached"
    );
    assert!(p2.info().unlinked);
    let b = p1.allocate("still-works", 100).unwrap();
    assert_eq!(
        owner.lookup("still-works").unwrap().unwrap().offset,
        b.offset()
    );
    drop((p1, p2, owner));

    let never = unique("never");
    drop(Arena::create(&never, &Options::new(1 << 20).unlink(Unlink::Never)).unwrap());
    assert_eq!(support::leftovers(&never).len(), 1);
    let again = Arena::attach(&never, Duration::from_secs(1)).unwrap();
    assert_eq!(again.info().unlink, Unlink::Never);
    again.unlink().unwrap();
    assert!(support::leftovers(&never).is_empty());

    let solo = unique("solo");
    let only = Arena::create(
        &solo,
        &Options::new(1 << 20).unlink(Unlink::AfterAttach { peers: 0 }),
    )
    .unwrap();
    assert!(
        support::leftovers(&solo).is_empty(),
        "with no peers the creator unlinks at once"
    );
    drop(only);
}

fn nothing_left_in_dev_shm() {
    let left = support::leftovers(&support::unique(""));
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

fn main() {
    support::main(
        &[
            ("same_names", role_same_names),
            ("halt_holding_lock", role_halt_holding_lock),
            ("hold_user_lock", role_hold_user_lock),
            ("attach_and_wait", role_attach_and_wait),
            ("churn", role_churn),
        ],
        &[
            (
                "four_processes_share_names_offsets_and_contents",
                four_processes_share_names_offsets_and_contents,
            ),
            (
                "kill_9_while_holding_the_lock_recovers",
                kill_9_while_holding_the_lock_recovers,
            ),
            ("attach_errors_are_clear", attach_errors_are_clear),
            (
                "full_backing_directory_is_an_error_not_a_sigbus",
                full_backing_directory_is_an_error_not_a_sigbus,
            ),
            ("unlink_policies", unlink_policies),
            (
                "killed_attacher_does_not_keep_the_name",
                killed_attacher_does_not_keep_the_name,
            ),
            (
                "user_lock_names_its_holder_and_survives_its_death",
                user_lock_names_its_holder_and_survives_its_death,
            ),
            (
                "killed_processes_leave_the_directory_consistent",
                killed_processes_leave_the_directory_consistent,
            ),
            ("nothing_left_in_dev_shm", nothing_left_in_dev_shm),
        ],
    );
}
