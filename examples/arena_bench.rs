//! Single-process arena benchmark: allocate / find / deallocate latency with 1, 1,000 and
//! 100,000 live names, finds of names made long before (`find-old`), and the cost of names
//! new to the arena (`new-held`: 20,000 names
//! allocated and held, then released, `free-held`). Prints a table; `--json FILE` writes the
//! figures too.
//!
//!     cargo run --release --example arena_bench [-- --json arena.json] [--live N] [--rounds N]
//!         [--expected-names N] [--dir DIR] [--new-only]
//!
//! Each level has a `core-loop` row (ns a step of a load/store loop, the host's speed for one
//! core while the level ran; bench/host.rs), and the last line a 4 MiB pointer chase (how far
//! this VM's share of the caches reaches), which the 100,000-name rows depend on.
//!
//! `PROBE_NAMES=N` cycles the probes through N names instead of 20,000 fresh ones (with few,
//! their directory lines stay in cache: what the directory's size costs shows as the
//! difference).

use std::time::{Duration, Instant};

use nodeshm::arena::{Arena, Options, Unlink};

#[path = "bench/host.rs"]
mod host;

const SAMPLES: usize = 20_000;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_nanos() as f64
}

fn main() -> nodeshm::Result<()> {
    let json_path = std::env::args().skip_while(|a| a != "--json").nth(1);
    // `--live N`: only that level (for profiling the probe loop).
    let only: Option<usize> = std::env::args()
        .skip_while(|a| a != "--live")
        .nth(1)
        .and_then(|n| n.parse().ok());
    // `--rounds N`: repeat each level's probe loop N times (a longer run for `perf record`).
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    // `--expected-names N`: directory reservation (as the MPI benchmark's arena: 2^18; the
    // directory uses what the live names need, up to a chain per name).
    let expected: u64 = std::env::args()
        .skip_while(|a| a != "--expected-names")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1 << 18);
    // `--new-only`: no probe loop, only the new names (for profiling those).
    let skip_probes = std::env::args().any(|a| a == "--new-only");
    // `--dir DIR`: the arena's file in DIR (a hugetlbfs or huge=always tmpfs mount, to see
    // what the TLB costs at 100,000 names) instead of /dev/shm.
    let dir = std::env::args().skip_while(|a| a != "--dir").nth(1);
    let name = format!("nodeshm-bench-{}", std::process::id());
    let mut options = Options::new(256 << 20)
        .unlink(Unlink::AfterAttach { peers: 0 })
        .expected_names(expected);
    if let Some(dir) = dir {
        options = options.dir(dir);
    }
    let arena = Arena::create(&name, &options)?;
    println!(
        "{:>12} {:>10} {:>12} {:>12}",
        "live names", "operation", "median ns", "p99 ns"
    );
    let mut rows = Vec::new();
    // What timing one call costs by itself (two clock reads): part of every figure below.
    let mut empty: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            t.elapsed()
        })
        .collect();
    empty.sort();
    let timer = percentile(&empty, 0.5);
    println!(
        "{:>12} {:>10} {timer:>12.0} {:>12.0}",
        "-",
        "timer",
        percentile(&empty, 0.99)
    );
    rows.push(format!(
        "{{\"live_names\":0,\"op\":\"timer\",\"median_ns\":{timer:.0}}}"
    ));
    // How far this VM's share of the caches reaches now (bench/host.rs): the 100,000-name
    // rows depend on it. Before the first level and after the last, not between the rows.
    let chase_before = host::chase_ns();
    let mut live = Vec::new();
    let levels: Vec<usize> = only.map_or(vec![1, 1_000, 100_000], |n| vec![n]);
    for target in levels {
        while live.len() < target {
            live.push(arena.allocate(&format!("live-{}", live.len()), 64)?);
        }
        let distinct: usize = std::env::var("PROBE_NAMES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SAMPLES);
        let names: Vec<String> = (0..SAMPLES)
            .map(|i| format!("probe-{}", i % distinct))
            .collect();
        let mut alloc = Vec::with_capacity(SAMPLES);
        let mut find = Vec::with_capacity(SAMPLES);
        let mut dealloc = Vec::with_capacity(SAMPLES);
        // Allocate a fresh name, find it, then release both references: the live count stays at
        // `target` (+1 during the probe).
        let probe_rounds = if skip_probes { 0 } else { rounds };
        let core_before = (!skip_probes).then(host::core_loop_ns);
        for n in std::iter::repeat_n(&names, probe_rounds).flatten() {
            let t = Instant::now();
            let b = arena.allocate(n, 64)?;
            alloc.push(t.elapsed());
            let t = Instant::now();
            let f = arena.find(n)?.expect("just allocated");
            find.push(t.elapsed());
            arena.deallocate(f)?;
            let t = Instant::now();
            arena.deallocate(b)?;
            dealloc.push(t.elapsed());
        }
        // Which of the host's two speeds the rows of this level were measured in.
        if let Some(before) = core_before {
            let core = (before + host::core_loop_ns()) / 2.0;
            println!("{target:>12} {:>10} {core:>12.2} {:>12}", "core-loop", "-");
            rows.push(format!(
                "{{\"live_names\":{target},\"op\":\"core-loop\",\"ns_per_step\":{core:.3}}}"
            ));
        }
        // Finds of names that were made long before, in a scattered order (a fixed-seed
        // generator): what a code pays to look up one of many tables whose lines have left the
        // cache, where the probe above finds the name it just made.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let old_names: Vec<String> = (0..SAMPLES)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                format!("live-{}", (x >> 33) as usize % live.len())
            })
            .collect();
        let mut find_old = Vec::with_capacity(SAMPLES);
        for n in std::iter::repeat_n(&old_names, probe_rounds).flatten() {
            let t = Instant::now();
            let f = arena.find(n)?.expect("a live name");
            find_old.push(t.elapsed());
            arena.deallocate(f)?;
        }
        // Then names new to the arena, held until all exist, as the MPI benchmark's "new
        // names (held)" rows: each takes a new slot and heap block (or a parked pair, from the
        // level before), and the directory grows with them. This is what a name costs to
        // create, and what every rank on the same names waits for.
        let fresh: Vec<String> = (0..SAMPLES).map(|i| format!("fresh-{i}")).collect();
        let mut create = Vec::with_capacity(SAMPLES);
        let mut release = Vec::with_capacity(SAMPLES);
        for _ in 0..rounds {
            let mut held = Vec::with_capacity(SAMPLES);
            for n in &fresh {
                let t = Instant::now();
                held.push(arena.allocate(n, 64)?);
                create.push(t.elapsed());
            }
            for b in held {
                let t = Instant::now();
                arena.deallocate(b)?;
                release.push(t.elapsed());
            }
        }
        for (op, mut v) in [
            ("allocate", alloc),
            ("find", find),
            ("find-old", find_old),
            ("deallocate", dealloc),
            ("new-held", create),
            ("free-held", release),
        ] {
            if v.is_empty() {
                continue;
            }
            v.sort();
            let (median, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
            println!("{target:>12} {op:>10} {median:>12.0} {p99:>12.0}");
            rows.push(format!(
                "{{\"live_names\":{target},\"op\":\"{op}\",\"median_ns\":{median:.0},\"p99_ns\":{p99:.0}}}"
            ));
        }
    }
    let chase = [chase_before, host::chase_ns()];
    println!(
        "a pointer chase over 4 MiB: {:.0} ns a step before the levels, {:.0} after",
        chase[0], chase[1]
    );
    rows.push(format!(
        "{{\"live_names\":0,\"op\":\"chase-4mib\",\"before_ns\":{:.1},\"after_ns\":{:.1}}}",
        chase[0], chase[1]
    ));
    arena.verify()?;
    if let Some(path) = json_path {
        std::fs::write(&path, format!("[{}]\n", rows.join(",\n"))).map_err(|e| {
            nodeshm::Error::Io {
                what: format!("writing {path}"),
                source: e,
            }
        })?;
    }
    Ok(())
}
