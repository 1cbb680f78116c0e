//! An arena that outlives the job, for tools: rank 0 of each node publishes a table in an
//! allocator with `UnlinkPolicy::Never`, and prints where it is. Inspect it afterwards with
//! `nodeshm ls` / `nodeshm stat <name>`, attach to it with `Arena::attach`, and remove it with
//! `nodeshm gc` once its creator is gone.
//!
//!     mpirun -n 2 target/release/examples/persistent_table

use mpi::traits::*;
use nodeshm::{ResourceManager, Traits, UnlinkPolicy};

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
    let traits = Traits::new(16 << 20).unlink(UnlinkPolicy::Never);
    let alloc = rm.make_resource("SHARED::published", traits)?;
    let table = alloc.get_or_init::<u32>("squares", 1000, |t| {
        for (i, v) in t.iter_mut().enumerate() {
            *v = (i * i) as u32;
        }
    })?;
    let status = alloc.allocate("status", 64)?;
    if alloc.communicator().rank() == 0 {
        println!(
            "published {} values at {}",
            table.len(),
            alloc.shm_path().display()
        );
    }
    // Keep the blocks for the tools after the ranks exit.
    table.persist()?;
    alloc.persist(status)?;
    Ok(())
}
