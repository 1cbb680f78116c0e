//! What goes wrong across ranks: mismatched arguments, a full backing directory, a killed
//! rank, two jobs with the same allocator name.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mpi::traits::*;
use nodeshm::{ErrorCode, ResourceManager, Traits};

use crate::support::{self, launch::Job};
use crate::{expect_ok, run, LIMIT};

/// Ranks that disagree about the arguments of a collective call.
pub fn role_mismatch() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rank = world.rank();
    let rm = ResourceManager::new(&world).unwrap();
    let size = if rank == 1 { 2 << 20 } else { 1 << 20 };
    let err = rm
        .make_resource("SHARED::m", Traits::new(size))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(err.to_string().contains("rank 1 passed"), "{err}");
    let name = if rank == 2 {
        "SHARED::other"
    } else {
        "SHARED::m"
    };
    let err = rm.make_resource(name, Traits::new(1 << 20)).unwrap_err();
    assert!(err.to_string().contains("rank 2 passed"), "{err}");
    assert!(rm.allocators().is_empty());
    println!("ok rank {rank}");
}

pub fn mismatched_arguments_fail_everywhere() {
    run(4, Job::role(4, "mismatch"));
}

/// A leader whose backing directory is too small: every rank gets its error.
pub fn role_full() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rm = ResourceManager::new(&world).unwrap();
    let dir = support::role_arg();
    let err = rm
        .make_resource("SHARED::full", Traits::new(64 << 20).dir(&dir))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoSpaceInBacking, "{err}");
    // Every rank can match the typed error with its fields, not only the rank where it happened.
    match (&err, err.root()) {
        (
            nodeshm::Error::Collective { rank: 0, .. },
            nodeshm::Error::NoSpaceInBacking {
                requested,
                available,
                dir: where_,
            },
        ) => {
            assert_eq!(*requested, 64 << 20);
            assert!(*available <= 16 << 20, "{available}");
            assert_eq!(where_, std::path::Path::new(&dir));
        }
        _ => panic!("not a typed NoSpaceInBacking from rank 0: {err:?}"),
    }
    assert!(
        err.to_string().contains("64.0 MiB") && err.to_string().contains("on rank 0"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing is left in {dir}"
    );
    let small = rm
        .make_resource("SHARED::small", Traits::new(4 << 20).dir(&dir))
        .unwrap();
    assert!(small.allocate("fits", 1 << 20).is_ok());
    println!("ok rank {}", world.rank());
}

pub fn full_backing_directory_fails_everywhere() {
    if !support::is_root() {
        println!("skipped: needs root (mounts a 16 MiB tmpfs)");
        return;
    }
    let tmpfs = support::Mount::tmpfs("16m");
    run(4, Job::role(4, &format!("full:{}", tmpfs.0.display())));
}

/// A rank killed after make_resource: nothing of the job may stay in /dev/shm.
pub fn role_killed() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rm = ResourceManager::new(&world).unwrap();
    let alloc = rm
        .make_resource("SHARED::killed", Traits::new(4 << 20))
        .unwrap();
    let _block = alloc.allocate("held", 1 << 20).unwrap();
    println!("ok rank {} token {:016x}", world.rank(), rm.job_token());
    world.barrier();
    if world.rank() == 1 {
        nix::sys::signal::raise(nix::sys::signal::SIGKILL).unwrap();
    }
    std::thread::sleep(Duration::from_secs(60));
}

pub fn killed_rank_leaks_nothing() {
    let (ok, out) = support::run_with_timeout(&mut Job::role(4, "killed").command(), LIMIT);
    assert!(!ok, "the job should fail when a rank is killed:\n{out}");
    let token = out
        .lines()
        .find_map(|l| l.split("token ").nth(1))
        .unwrap_or_else(|| panic!("no token printed:\n{out}"))
        .trim()
        .to_string();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok rank")).count(),
        4,
        "{out}"
    );
    let left = support::leftovers(&token);
    assert!(
        left.is_empty(),
        "left in /dev/shm after the killed job: {left:?}"
    );
}

/// Two jobs at once, same allocator name: separate memory.
pub fn role_twojobs() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rm = ResourceManager::new(&world).unwrap();
    let alloc = rm
        .make_resource("SHARED::same", Traits::new(1 << 20))
        .unwrap();
    let block = alloc.allocate("token", 8).unwrap();
    let dir = PathBuf::from(support::role_arg());
    if world.rank() == 0 {
        block.as_atomic_u64()[0].store(rm.job_token(), Ordering::Release);
        std::fs::write(
            dir.join(format!("{:016x}", rm.job_token())),
            alloc.shm_path().display().to_string(),
        )
        .unwrap();
        // Wait until the other job is up too, so both arenas exist at the same time.
        let start = Instant::now();
        while std::fs::read_dir(&dir).unwrap().count() < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the other job never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    world.barrier();
    assert_eq!(
        block.as_atomic_u64()[0].load(Ordering::Acquire),
        rm.job_token(),
        "another job wrote here"
    );
    world.barrier();
    alloc.deallocate(block).unwrap();
    println!("ok rank {} job {:016x}", world.rank(), rm.job_token());
}

pub fn two_jobs_never_share() {
    let dir = std::env::temp_dir().join(format!("nodeshm-twojobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let role = format!("twojobs:{}", dir.display());
    let mut a = Job::role(2, &role).command();
    let mut b = Job::role(2, &role).command();
    let first = std::thread::spawn(move || support::run_with_timeout(&mut a, LIMIT));
    let second = support::run_with_timeout(&mut b, LIMIT);
    expect_ok(2, first.join().unwrap());
    expect_ok(2, second);
    let paths: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(paths.len(), 2);
    assert_ne!(paths[0], paths[1], "the two jobs used the same shm name");
    std::fs::remove_dir_all(&dir).unwrap();
}
