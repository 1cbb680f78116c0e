//! nodeshm against MPI-3 shared windows and one copy per rank, measured in one run:
//! creation, named allocation, contention, node memory, read bandwidth, and random access with
//! 4 KiB against huge pages. Rank 0 prints tables and the targets; `--json FILE` writes every
//! figure, `--svg FILE` plots allocate latency against live names.
//!
//!     mpirun -n 4 target/release/examples/bench [--quick] [--json bench.json] [--svg bench.svg]
//!                                                [--huge-dir <tmpfs mounted huge=always>]
//!                                                [--hugetlb-dir <hugetlbfs mount>]
//!                                                [--only creation|named|contention|memory|random]
//!
//! `scripts/bench.sh` runs it with the arguments used for the README.

mod cases;
mod creation;
mod mpiwin;
mod report;

use mpi::traits::*;
use nodeshm::ResourceManager;
use serde::Serialize;

use cases::Ctx;

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[derive(Serialize)]
struct Target {
    target: String,
    measured: String,
    met: bool,
}

/// Checks the targets against what was measured.
fn targets(r: &report::Report, ranks: i32, quick: bool) -> Vec<Target> {
    let mut out = Vec::new();
    let variant = format!("allocate, {ranks} ranks, distinct names");
    let meds: Vec<f64> = ["1 live", "1000 live", "100000 live"]
        .iter()
        .filter_map(|p| r.get("named", &variant, p, "median"))
        .collect();
    if let (Some(first), Some(worst)) = (meds.first(), meds.iter().copied().reduce(f64::max)) {
        out.push(Target {
            target: format!(
                "named allocate median < 1 us with {ranks} ranks at once, flat in live names"
            ),
            measured: format!(
                "{} ns (1 live) .. {} ns (worst), x{:.2} from 1 to 100,000 live",
                first.round(),
                worst.round(),
                meds.last().unwrap() / first
            ),
            met: worst < 1000.0 && meds.last().unwrap() / first < 2.0,
        });
    }
    let sizes: &[&str] = if quick {
        &["1 MiB", "64 MiB", "256 MiB"]
    } else {
        &["1 MiB", "64 MiB", "1 GiB"]
    };
    for size in sizes {
        for metric in ["ready", "ready+touched"] {
            let ours = r.get("creation", "nodeshm", size, metric);
            let theirs = r.get("creation", "MPI_Win_allocate_shared", size, metric);
            if let (Some(o), Some(t)) = (ours, theirs) {
                out.push(Target {
                    target: format!(
                        "creation {metric} of {size} within 1.5x of MPI_Win_allocate_shared"
                    ),
                    measured: format!("{o:.2} ms vs {t:.2} ms: x{:.2}", o / t),
                    met: o <= 1.5 * t,
                });
            }
        }
    }
    let table = if quick { "64 MiB" } else { "256 MiB" };
    if let Some(ratio) = r.get("memory", "nodeshm / per-rank", table, "ratio") {
        let limit = 1.0 / ranks as f64 + 0.05;
        out.push(Target {
            target: format!(
                "node Pss at most 1/P + 5% of per-rank copies (P = {ranks}: {limit:.3})"
            ),
            measured: format!("{ratio:.3}"),
            met: ratio <= limit,
        });
    }
    if let Some(ratio) = r.get("bandwidth", "shared / private", table, "ratio") {
        out.push(Target {
            target: "shared read bandwidth at least 0.95x of private".into(),
            measured: format!("{ratio:.3}"),
            met: ratio >= 0.95,
        });
    }
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let rm = ResourceManager::new(&world).expect("ResourceManager::new");
    let mut ctx = Ctx {
        world: &world,
        rm: &rm,
        quick,
        report: report::Report::default(),
        huge_dir: arg("--huge-dir"),
        hugetlb_dir: arg("--hugetlb-dir"),
    };
    let ranks = world.size();
    let started = std::time::Instant::now();
    // `--only CASE` runs one case (creation, named, contention, memory, random).
    let only = arg("--only");
    let wanted = |case: &str| only.as_deref().is_none_or(|o| o == case);
    if wanted("creation") {
        creation::creation(&mut ctx);
    }
    let (mut ours, mut windows) = (Vec::new(), Vec::new());
    if wanted("named") {
        ours = cases::named(&mut ctx);
        windows = cases::mpi_windows(&mut ctx);
    }
    if wanted("contention") {
        cases::contention(&mut ctx);
    }
    if wanted("memory") {
        cases::memory_and_bandwidth(&mut ctx);
    }
    if wanted("random") {
        cases::random_access(&mut ctx);
    }
    world.barrier();
    if world.rank() != 0 {
        return;
    }
    // The library's string can carry its C terminator and a trailing newline (Open MPI, MPICH).
    let mpi_version = mpi::environment::library_version()
        .unwrap_or_default()
        .trim_end_matches(['\0', '\n', ' '])
        .to_string();
    let mpi_version = mpi_version.lines().next().unwrap_or("").trim().to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%F %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "nodeshm benchmark{}: {ranks} ranks on {cores} cores, {mpi_version}, {date}",
        if quick { " (quick)" } else { "" }
    );
    let r = &ctx.report;
    r.print_case(
        "creation",
        "1. creation: time until every rank can use the memory (median of runs, slowest rank)",
    );
    r.print_case("named", "2. named allocation (64 B), latency per call");
    r.print_case(
        "contention",
        "3. contention: allocate+deallocate pairs of distinct names",
    );
    r.print_case(
        "memory",
        "4. memory: a read-only table needed by every rank, node total Pss",
    );
    r.print_case(
        "bandwidth",
        "5. bandwidth: every rank reads the whole table (sequential u64 sum)",
    );
    r.print_case(
        "random access",
        "6. placement: random 8-byte reads over a shared table (prefaulted)",
    );
    let targets = targets(r, ranks, quick);
    println!("\ntargets");
    for t in &targets {
        println!(
            "  {} {}: {}",
            if t.met { "met   " } else { "MISSED" },
            t.target,
            t.measured
        );
    }
    println!("\n({:.1} s)", started.elapsed().as_secs_f64());
    if let Some(path) = arg("--json") {
        let doc = serde_json::json!({
            "ranks": ranks, "cores": cores, "mpi": mpi_version, "date": date, "quick": quick,
            "records": r.records, "targets": targets,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap())
            .expect("writing the JSON file");
    }
    if let Some(path) = arg("--svg") {
        let svg = report::svg_plot(
            &format!("named allocate latency, {ranks} ranks at once"),
            "live names (objects)",
            "median latency (ns, log scale)",
            &[
                ("nodeshm allocate", "#1f77b4", ours),
                ("MPI_Win_allocate_shared", "#d62728", windows),
            ],
        );
        std::fs::write(&path, svg).expect("writing the SVG file");
    }
}
