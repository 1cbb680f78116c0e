//! Umpire's shared-memory cookbook recipe with nodeshm: every rank allocates the same name in a
//! node-scoped allocator, node rank 0 writes 0xDEADBEEF, a barrier, every rank checks.
//!
//!     mpirun -n 4 target/release/examples/cookbook

use std::sync::atomic::Ordering;

use mpi::traits::*;
use nodeshm::{ResourceManager, Traits};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), nodeshm::Error> {
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let rm = ResourceManager::new(&world)?;
    let allocator = rm.make_resource("SHARED::node_allocator", Traits::new(64 << 20))?;
    let node = allocator.communicator();

    let block = allocator.allocate("allocation_name_2", std::mem::size_of::<u64>() as u64)?;
    let value = &block.as_atomic_u64()[0];
    if node.rank() == 0 {
        value.store(0xDEADBEEF, Ordering::Release);
    }
    node.barrier();
    let seen = value.load(Ordering::Acquire);
    println!(
        "world rank {} (node rank {} of {}): read {seen:#x} at arena offset {}",
        world.rank(),
        node.rank(),
        node.size(),
        block.offset()
    );
    assert_eq!(
        seen,
        0xDEADBEEF,
        "rank {} did not see node rank 0's write",
        world.rank()
    );
    node.barrier();
    allocator.deallocate(block)?;
    Ok(())
}
