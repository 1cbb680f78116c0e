//! One read-only table per node instead of one per rank: rank 0 of the node fills a 256 MiB
//! table in a node-scoped allocator, every rank reads all of it, and the node's memory use
//! (sum of every rank's Pss from /proc/self/smaps_rollup) is compared with each rank keeping
//! its own copy.
//!
//!     mpirun -n 4 target/release/examples/node_table [--mib 256]

use mpi::collective::SystemOperation;
use mpi::traits::*;
use nodeshm::{ResourceManager, Traits};

/// This process's proportional set size in bytes (shared pages divided among their mappers).
fn pss_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn checksum(values: &[f64]) -> f64 {
    values.iter().step_by(512).sum()
}

fn fill(values: &mut [f64]) {
    for (i, v) in values.iter_mut().enumerate() {
        *v = (i % 1000) as f64 * 0.25;
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), nodeshm::Error> {
    let mib: usize = std::env::args()
        .skip_while(|a| a != "--mib")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let len = mib * (1 << 20) / 8;
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let rm = ResourceManager::new(&world)?;
    let node = rm.node_communicator();
    // Before make_resource: each rank maps its share of the pages while reserving it, and
    // that share is part of what the table costs the node.
    let baseline = pss_bytes();
    let alloc = rm.make_resource("SHARED::tables", Traits::new((mib as u64 + 1) << 20))?;
    let table = alloc.get_or_init::<f64>("eos", len, fill)?;
    let shared_sum = checksum(&table);
    // Pss divides each shared page among the ranks mapping it: measure once all have.
    node.barrier();
    let shared_pss = pss_bytes().saturating_sub(baseline);
    let mut node_shared = 0u64;
    node.all_reduce_into(&shared_pss, &mut node_shared, SystemOperation::sum());
    drop(table);

    let baseline = pss_bytes();
    let mut private = vec![0f64; len];
    fill(&mut private);
    let private_sum = checksum(&private);
    let private_pss = pss_bytes().saturating_sub(baseline);
    let mut node_private = 0u64;
    node.all_reduce_into(&private_pss, &mut node_private, SystemOperation::sum());
    drop(private);

    assert_eq!(
        shared_sum, private_sum,
        "the shared table holds what rank 0 wrote"
    );
    if node.rank() == 0 {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        println!(
            "node table of {mib} MiB read by {} ranks on this node:",
            node.size()
        );
        println!("  one copy per rank : {:7.3} GiB of Pss", gib(node_private));
        println!("  nodeshm (one copy): {:7.3} GiB of Pss", gib(node_shared));
        println!(
            "  ratio             : {:7.3} (ideal 1/{} = {:.3})",
            node_shared as f64 / node_private.max(1) as f64,
            node.size(),
            1.0 / node.size() as f64
        );
    }
    Ok(())
}
