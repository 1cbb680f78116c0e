//! The manager on one node: every call, with 1, 2 and 4 ranks, and on a sub-communicator.

use std::sync::atomic::Ordering;

use mpi::traits::*;
use nodeshm::{ErrorCode, ResourceManager, Scope, Traits};

use crate::run;
use crate::support::launch::Job;

/// Everything the manager does on one node, with `np` ranks.
pub fn role_basic() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let rm = ResourceManager::new(&world).unwrap();
    let alloc = rm
        .make_resource("SHARED::basic", Traits::new(8 << 20))
        .unwrap();
    let comm = alloc.communicator();
    assert_eq!(
        (comm.size(), comm.rank()),
        (size, rank),
        "one node: the allocator spans all"
    );
    assert_eq!(alloc.name(), "SHARED::basic");
    assert_eq!(alloc.scope_instance().scope, Scope::Node);
    assert_eq!(rm.allocators(), vec!["SHARED::basic".to_string()]);
    // The ranks reserved their shares in parallel: every page exists before anyone allocates.
    assert_eq!(
        alloc.arena().reserved_bytes().unwrap(),
        alloc.arena().size()
    );
    assert!(rm.get_allocator("SHARED::basic").is_some() && rm.get_allocator("SHARED::x").is_none());

    // Same name, same block: rank 0 writes, all read.
    let block = alloc.allocate("shared", 4096).unwrap();
    if rank == 0 {
        for (i, w) in block.as_atomic_u64().iter().enumerate() {
            w.store(i as u64 * 3 + 7, Ordering::Release);
        }
    }
    comm.barrier();
    for (i, w) in block.as_atomic_u64().iter().enumerate() {
        assert_eq!(w.load(Ordering::Acquire), i as u64 * 3 + 7);
    }
    let mut offsets = vec![0u64; size as usize];
    comm.all_gather_into(&block.offset(), &mut offsets[..]);
    assert!(offsets.iter().all(|&o| o == block.offset()));
    let info = alloc.arena().lookup("shared").unwrap().unwrap();
    assert_eq!(info.refcount, size as u64, "every rank holds one reference");
    comm.barrier();

    // Errors are per rank and leave everything intact.
    assert_eq!(
        alloc.allocate("shared", 8192).unwrap_err().code(),
        ErrorCode::SizeMismatch
    );
    let full = alloc
        .allocate(&format!("too-big-{rank}"), 9 << 20)
        .unwrap_err();
    assert_eq!(full.code(), ErrorCode::OutOfSpace, "{full}");
    let found = alloc.find("shared").unwrap().expect("exists");
    assert_eq!(found.offset(), block.offset());
    assert!(alloc.find("missing").unwrap().is_none());
    alloc.deallocate(found).unwrap();
    alloc.deallocate(block).unwrap();
    assert_eq!(
        alloc.deallocate(block).unwrap_err().code(),
        ErrorCode::NotHeld
    );
    comm.barrier();
    assert!(
        alloc.arena().lookup("shared").unwrap().is_none(),
        "the last release freed it"
    );
    assert_eq!(alloc.stats().unwrap().live_blocks, 0);
    comm.barrier();

    // get_or_init: rank 0 fills, everyone sees the same table.
    let table = alloc
        .get_or_init::<f64>("table", 10_000, |t| {
            for (i, v) in t.iter_mut().enumerate() {
                *v = i as f64 * 0.5;
            }
        })
        .unwrap();
    assert_eq!(table.len(), 10_000);
    assert_eq!(table.iter().sum::<f64>(), 0.5 * (9_999.0 * 10_000.0 / 2.0));
    assert!(alloc.actual_size().unwrap() >= 80_000);
    drop(table);

    // The user lock serialises a read-modify-write across ranks.
    let counter = alloc.allocate("counter", 8).unwrap();
    for _ in 0..100 {
        let guard = alloc.lock().unwrap();
        let w = &counter.as_atomic_u64()[0];
        w.store(w.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        drop(guard);
    }
    comm.barrier();
    assert_eq!(
        counter.as_atomic_u64()[0].load(Ordering::Acquire),
        100 * size as u64
    );
    comm.barrier();
    alloc.deallocate(counter).unwrap();

    // Collective errors: the same on every rank, nobody hangs.
    let again = rm
        .make_resource("SHARED::basic", Traits::new(1 << 20))
        .unwrap_err();
    assert_eq!(again.code(), ErrorCode::AlreadyExists, "{again}");
    let bad = rm
        .make_resource("no-prefix", Traits::new(1 << 20))
        .unwrap_err();
    assert_eq!(bad.code(), ErrorCode::InvalidName, "{bad}");
    let zero = rm
        .make_resource("SHARED::zero", Traits::new(0))
        .unwrap_err();
    assert_eq!(zero.code(), ErrorCode::InvalidArgument, "{zero}");
    let nul = rm
        .make_resource("SHARED::a\0b", Traits::new(1 << 20))
        .unwrap_err();
    assert_eq!(nul.code(), ErrorCode::InvalidName, "{nul}");
    let huge = rm
        .make_resource("SHARED::huge", Traits::new(u64::MAX))
        .unwrap_err();
    assert_eq!(huge.code(), ErrorCode::InvalidArgument, "{huge}");
    assert!(huge.to_string().contains("128.0 TiB"), "{huge}");
    let open = rm
        .make_resource("SHARED::open", Traits::new(1 << 20).mode(0o4777))
        .unwrap_err();
    assert_eq!(open.code(), ErrorCode::InvalidArgument, "{open}");

    // Dropping the last handle frees the allocator: its arena goes, and the name can be made
    // again (new shm objects), on every rank.
    let once = rm
        .make_resource(
            "SHARED::again",
            Traits::new(4 << 20).unlink(nodeshm::UnlinkPolicy::OnLastDetach),
        )
        .unwrap();
    let first_path = once.shm_path().to_path_buf();
    let handle = rm
        .get_allocator("SHARED::again")
        .expect("found while alive");
    assert!(first_path.exists());
    drop((once, handle));
    world.barrier();
    assert!(
        !first_path.exists(),
        "{} outlived every handle",
        first_path.display()
    );
    assert!(rm.get_allocator("SHARED::again").is_none());
    assert!(!rm.allocators().contains(&"SHARED::again".to_string()));
    let twice = rm
        .make_resource("SHARED::again", Traits::new(4 << 20))
        .unwrap();
    assert_ne!(twice.shm_path(), first_path);
    assert_eq!(twice.traits().size, 4 << 20);
    drop(twice);

    // The arena's name is gone once all ranks attached (default unlink policy).
    assert!(
        !alloc.shm_path().exists(),
        "{} still exists",
        alloc.shm_path().display()
    );
    println!("ok rank {rank}");
}

pub fn basic_1_rank() {
    run(1, Job::role(1, "basic"));
}
pub fn basic_2_ranks() {
    run(2, Job::role(2, "basic"));
}
pub fn basic_4_ranks() {
    run(4, Job::role(4, "basic"));
}

/// A manager on a sub-communicator (not the world): each half of the ranks gets its own
/// allocators, communicators and job token.
pub fn role_subcomm() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let half = world
        .split_by_color(mpi::topology::Color::with_value(world.rank() % 2))
        .unwrap();
    let rm = ResourceManager::new(&half).unwrap();
    let alloc = rm
        .make_resource("SHARED::half", Traits::new(1 << 20))
        .unwrap();
    assert_eq!(alloc.communicator().size(), half.size());
    let block = alloc.allocate("owner", 8).unwrap();
    if alloc.communicator().rank() == 0 {
        block.as_atomic_u64()[0].store(1 + (world.rank() % 2) as u64, Ordering::Release);
    }
    world.barrier();
    assert_eq!(
        block.as_atomic_u64()[0].load(Ordering::Acquire),
        1 + (world.rank() % 2) as u64
    );
    let mut tokens = vec![0u64; world.size() as usize];
    world.all_gather_into(&rm.job_token(), &mut tokens[..]);
    assert_ne!(tokens[0], tokens[1], "the two managers share a job token");
    assert_eq!(tokens[0], tokens[2]);
    world.barrier();
    alloc.deallocate(block).unwrap();
    println!("ok rank {} in half {}", world.rank(), world.rank() % 2);
}

pub fn manager_on_a_sub_communicator() {
    run(4, Job::role(4, "subcomm"));
}
