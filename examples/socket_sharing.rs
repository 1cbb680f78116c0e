//! Socket-scoped sharing: the ranks of each socket get their own arena and communicator and
//! exchange data through a shared buffer instead of messages.
//!
//!     mpirun -n 4 --bind-to core target/release/examples/socket_sharing
//!
//! On a one-socket machine, load a two-socket description to see two arenas:
//!
//!     HWLOC_XMLFILE=tests/topologies/two-packages.xml HWLOC_THISSYSTEM=1 \
//!       mpirun -n 4 --oversubscribe --bind-to core:overload-allowed \
//!       -x HWLOC_XMLFILE -x HWLOC_THISSYSTEM target/release/examples/socket_sharing

use std::sync::atomic::Ordering;

use mpi::traits::*;
use nodeshm::{ResourceManager, Scope, Traits};

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
    let alloc = rm.make_resource("SHARED::halo", Traits::new(16 << 20).scope(Scope::Socket))?;
    let socket = alloc.communicator();
    let (me, n) = (socket.rank() as usize, socket.size() as usize);

    // One slot per rank of this socket; each rank publishes its world rank, then reads its
    // neighbours' slots after a barrier on the socket's own communicator.
    let slots = alloc.allocate("halo-slots", 8 * n as u64)?;
    let words = slots.as_atomic_u64();
    words[me].store(world.rank() as u64, Ordering::Release);
    socket.barrier();
    let left = words[(me + n - 1) % n].load(Ordering::Acquire);
    let right = words[(me + 1) % n].load(Ordering::Acquire);
    println!(
        "world rank {} is rank {me} of {n} on {}: neighbours are world ranks {left} and {right} \
         (arena {})",
        world.rank(),
        alloc.scope_instance(),
        alloc.shm_path().display()
    );
    socket.barrier();
    alloc.deallocate(slots)?;
    Ok(())
}
