//! The benchmark cases. Every function is collective over the world communicator: all ranks
//! call it, and the figures are reduced so that rank 0 holds them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use nodeshm::{Allocator, HugePages, ResourceManager, Traits};

use crate::mpiwin::SharedWindow;
use crate::report::Report;

pub struct Ctx<'a> {
    pub world: &'a SimpleCommunicator,
    pub rm: &'a ResourceManager,
    pub quick: bool,
    pub report: Report,
    pub huge_dir: Option<String>,
    pub hugetlb_dir: Option<String>,
}

pub const MIB: u64 = 1 << 20;

/// The named case's row for [`line_transfer`]'s figure.
pub const LINE_TRANSFER: &str = "cache line between ranks 0 and 1, one way";

/// The named case's row for [`host::core_loop_ns`](crate::host::core_loop_ns), timed around
/// the one-rank rows of each level.
pub const CORE_LOOP: &str = "rank 0's core, a load/store loop (ns a step)";

/// The named case's rows for [`host::chase_ns`](crate::host::chase_ns), timed before the
/// first level and after the last (in between it would evict the lines being measured).
pub const CHASE: &str = "rank 0, a pointer chase over 4 MiB (ns a step)";

fn reduce(comm: &SimpleCommunicator, v: f64, op: SystemOperation) -> f64 {
    let mut out = 0f64;
    comm.all_reduce_into(&v, &mut out, op);
    out
}

pub fn max(comm: &SimpleCommunicator, v: f64) -> f64 {
    reduce(comm, v, SystemOperation::max())
}

pub fn sum(comm: &SimpleCommunicator, v: f64) -> f64 {
    reduce(comm, v, SystemOperation::sum())
}

/// Waits for every rank, sleeping between polls: an MPI barrier spins on the cores that the
/// ranks still working (or a peer's processes) need.
pub fn idle_barrier(ctx: &Ctx) {
    let mut request = ctx.world.immediate_barrier();
    loop {
        match request.test() {
            Ok(_) => return,
            Err(pending) => request = pending,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// (median, p99) in ns.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_nanos() as f64;
    (at(0.5), at(0.99))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// Case 2: named allocate / find / deallocate latency with 1, 1,000 and 100,000 live names,
/// one rank alone and all ranks at once; against one shared window per object.
pub fn named(ctx: &mut Ctx) -> Vec<(f64, f64)> {
    let world = ctx.world;
    let rank = world.rank();
    let samples = if ctx.quick { 2_000 } else { 20_000 };
    // Up to 180,000 names live at once (100,000 plus 4 ranks' 20,000). 2^18 words (2 MiB),
    // not the 2^20 that would give them the chains per name the directory grows to keep
    // (then 4): with 2^20 the 1-rank rows gained about 10 ns at 100,000 names and the 4-rank
    // rows lost 1.3-1.8x to the splits of a directory growing 4 times further and its larger
    // footprint.
    let traits = Traits::new(256 * MIB).expected_names(1 << 18);
    let alloc = ctx
        .rm
        .make_resource("SHARED::names", traits)
        .expect("make_resource");
    let mut live = Vec::new();
    let mut curve = Vec::new();
    // What timing one call costs by itself (two clock reads): part of every latency here (and
    // of the Boost peer's, which times with the same clock).
    let mut empty: Vec<Duration> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            t.elapsed()
        })
        .collect();
    let (timer, _) = percentiles(&mut empty);
    ctx.report.add(
        "named",
        "timer (empty timed span)",
        "",
        "median",
        timer,
        "ns",
    );
    if let Some(one_way) = line_transfer(ctx, &alloc) {
        ctx.report
            .add("named", LINE_TRANSFER, "", "median", one_way, "ns");
    }
    if rank == 0 {
        let chase = crate::host::chase_ns();
        ctx.report
            .add("named", CHASE, "before", "median", chase, "ns");
    }
    for &n in &[1usize, 1_000, 100_000] {
        if rank == 0 {
            while live.len() < n {
                live.push(
                    alloc
                        .allocate(&format!("live-{}", live.len()), 64)
                        .expect("fill"),
                );
            }
        }
        world.barrier();
        let param = format!("{n} live");
        // One rank alone; the others sleep (an MPI barrier would spin on the same cores).
        let (mut a, mut f, mut d) = (Vec::new(), Vec::new(), Vec::new());
        let core_before = (rank == 0).then(crate::host::core_loop_ns);
        if rank == 0 {
            for i in 0..samples {
                let name = format!("probe-{i}");
                let t = Instant::now();
                let b = alloc.allocate(&name, 64).unwrap();
                a.push(t.elapsed());
                let t = Instant::now();
                let found = alloc.find(&name).unwrap().unwrap();
                f.push(t.elapsed());
                alloc.deallocate(found).unwrap();
                let t = Instant::now();
                alloc.deallocate(b).unwrap();
                d.push(t.elapsed());
            }
        }
        // The same rank alone again, with names that are new to the arena and stay held until
        // all are made, as in the all-ranks rows below: every one takes a new slot and a new
        // heap block, and the directory grows (splits) with them. These rows are the cost of
        // creating a name, which the all-ranks rows pay with or without other ranks.
        let (mut fa, mut fd) = (Vec::new(), Vec::new());
        if rank == 0 {
            let names: Vec<String> = (0..samples).map(|i| format!("fresh-{i}")).collect();
            let mut held = Vec::with_capacity(samples);
            for name in &names {
                let t = Instant::now();
                held.push(alloc.allocate(name, 64).unwrap());
                fa.push(t.elapsed());
            }
            for b in held {
                let t = Instant::now();
                alloc.deallocate(b).unwrap();
                fd.push(t.elapsed());
            }
        }
        // Which of the host's speeds the one-rank rows were measured in.
        if let Some(before) = core_before {
            let core = (before + crate::host::core_loop_ns()) / 2.0;
            ctx.report
                .add("named", CORE_LOOP, &param, "median", core, "ns");
        }
        idle_barrier(ctx);
        for (op, v) in [
            ("allocate", &mut a),
            ("find", &mut f),
            ("deallocate", &mut d),
            ("allocate new names (held)", &mut fa),
            ("deallocate new names (held)", &mut fd),
        ] {
            let (med, p99) = percentiles(v);
            ctx.report.add(
                "named",
                &format!("{op}, 1 rank"),
                &param,
                "median",
                med,
                "ns",
            );
            ctx.report
                .add("named", &format!("{op}, 1 rank"), &param, "p99", p99, "ns");
        }
        // All ranks at once: the same names (find-or-create, as Boost's find_or_construct),
        // then a name of their own each. Every rank asks for all its names, then releases them.
        for distinct in [false, true] {
            let (mut a, mut d) = (Vec::new(), Vec::new());
            let names: Vec<String> = (0..samples)
                .map(|i| {
                    if distinct {
                        format!("probe-{rank}-{i}")
                    } else {
                        format!("probe-{i}")
                    }
                })
                .collect();
            let mut held = Vec::with_capacity(samples);
            world.barrier();
            for name in &names {
                let t = Instant::now();
                held.push(alloc.allocate(name, 64).unwrap());
                a.push(t.elapsed());
            }
            world.barrier();
            for b in held {
                let t = Instant::now();
                alloc.deallocate(b).unwrap();
                d.push(t.elapsed());
            }
            world.barrier();
            let how = if distinct {
                "distinct names"
            } else {
                "same names"
            };
            for (op, v) in [("allocate", &mut a), ("deallocate", &mut d)] {
                let (med, p99) = percentiles(v);
                let (med, p99) = (max(world, med), max(world, p99));
                let variant = format!("{op}, {} ranks, {how}", world.size());
                ctx.report
                    .add("named", &variant, &param, "median", med, "ns");
                ctx.report.add("named", &variant, &param, "p99", p99, "ns");
                if op == "allocate" && distinct {
                    curve.push((n as f64, med));
                }
            }
        }
    }
    if rank == 0 {
        let chase = crate::host::chase_ns();
        ctx.report
            .add("named", CHASE, "after", "median", chase, "ns");
    }
    world.barrier();
    for b in live {
        alloc.deallocate(b).unwrap();
    }
    ctx.rm.remove_allocator("SHARED::names");
    curve
}

/// The node's online CPUs (not this rank's binding, which may be one CPU).
pub fn online_cpus() -> i64 {
    // SAFETY: sysconf only reads a system value.
    unsafe { nix::libc::sysconf(nix::libc::_SC_NPROCESSORS_ONLN) }.max(0)
}

/// Collective over the world: how long one cache line takes to go from rank 0's core to rank
/// 1's (half a round trip of a word the two pass back and forth in the arena: median of 5 runs
/// of 20,000 round trips, 2,000 with `--quick`; the other ranks sleep meanwhile). Every
/// contended row pays this per line that changes hands, and on a shared host it is not a
/// constant: this machine gave 26-36 ns in some minutes and 150-180 ns in others. `None` with
/// fewer than 2 ranks or CPUs, or when the peer stopped answering (each wait is bounded).
fn line_transfer(ctx: &Ctx, alloc: &Allocator) -> Option<f64> {
    let world = ctx.world;
    // Two ranks sharing one CPU would pass the word once per scheduler slice.
    if world.size() < 2 || online_cpus() < 2 {
        return None;
    }
    let block = alloc
        .allocate("line-transfer", 64)
        .expect("line-transfer block");
    let word = &block.as_atomic_u64()[0];
    let rank = world.rank();
    let trips: u64 = if ctx.quick { 2_000 } else { 20_000 };
    const RUNS: u64 = 5;
    idle_barrier(ctx);
    // 100,000 round trips take well under a second even at 1 us a line.
    let deadline = Instant::now() + Duration::from_secs(3);
    let wait_for = |value: u64| {
        let mut spins = 0u32;
        while word.load(Ordering::Acquire) != value {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 && Instant::now() > deadline {
                return false;
            }
        }
        true
    };
    // Rank 0's complete runs: a peer that stopped answering leaves fewer, and no figure.
    let mut runs = Vec::new();
    if rank <= 1 {
        // Rank 1 counts the odd values up, rank 0 the even ones; timing starts once both are
        // in the loop (rank 1's first answer), not at a barrier one of them may sleep through.
        let mut value = 0;
        'runs: for _ in 0..RUNS {
            let mut start = Instant::now();
            for trip in 0..=trips {
                if trip == 1 {
                    start = Instant::now();
                }
                let (ping, pong) = (value + 1, value + 2);
                value = pong;
                let answered = if rank == 0 {
                    word.store(ping, Ordering::Release);
                    wait_for(pong)
                } else {
                    let pinged = wait_for(ping);
                    word.store(pong, Ordering::Release);
                    pinged
                };
                if !answered {
                    break 'runs;
                }
            }
            runs.push(start.elapsed().as_nanos() as f64 / trips as f64 / 2.0);
        }
    }
    let one_way = if rank == 0 && runs.len() == RUNS as usize {
        median(&mut runs)
    } else {
        -1.0
    };
    idle_barrier(ctx);
    alloc.deallocate(block).expect("line-transfer block");
    let one_way = max(world, one_way);
    (one_way > 0.0).then_some(one_way)
}

/// Case 2, MPI side: one `MPI_Win_allocate_shared` per 64-byte object, as many as fit the time
/// budget; latency at 1, 10, 100, 1,000 live windows.
pub fn mpi_windows(ctx: &mut Ctx) -> Vec<(f64, f64)> {
    let world = ctx.world;
    let node = ctx.rm.node_communicator();
    let (count, budget) = if ctx.quick { (200, 5.0) } else { (1_000, 30.0) };
    let start = Instant::now();
    let mut wins = Vec::new();
    let mut lat = Vec::new();
    while wins.len() < count {
        world.barrier();
        let t = Instant::now();
        wins.push(SharedWindow::allocate(node, 64));
        lat.push(max(world, t.elapsed().as_secs_f64()) * 1e9);
        if max(world, start.elapsed().as_secs_f64()) > budget {
            break;
        }
    }
    let mut curve = Vec::new();
    for at in [1usize, 10, 100, 1_000] {
        if lat.len() >= at {
            let lo = at.saturating_sub(5).min(lat.len() - 1);
            let hi = (at + 5).min(lat.len());
            let mut window: Vec<f64> = lat[lo..hi].to_vec();
            let med = median(&mut window);
            ctx.report.add(
                "named",
                "MPI_Win_allocate_shared per object",
                &format!("{at} live"),
                "median",
                med,
                "ns",
            );
            curve.push((at as f64, med));
        }
    }
    let mut free = Vec::new();
    while let Some(w) = wins.pop() {
        let t = Instant::now();
        drop(w);
        free.push(t.elapsed().as_nanos() as f64);
    }
    if !free.is_empty() {
        ctx.report.add(
            "named",
            "MPI_Win_free per object",
            &format!("{} live", lat.len()),
            "median",
            median(&mut free),
            "ns",
        );
    }
    curve
}

/// Case 3: allocate+deallocate pairs per second with 1, 2, 4, ... ranks working at once (the
/// others wait without spinning): distinct names (every pair creates and removes a name, under
/// the lock) and the same names (one rank creates, the others find it without the lock).
pub fn contention(ctx: &mut Ctx) {
    let world = ctx.world;
    let rank = world.rank();
    let seconds = if ctx.quick { 0.3 } else { 1.5 };
    let alloc = ctx
        .rm
        .make_resource("SHARED::contention", Traits::new(64 * MIB))
        .expect("make_resource");
    let mut counts = vec![1];
    while counts.last().unwrap() * 2 <= world.size() {
        counts.push(counts.last().unwrap() * 2);
    }
    for same in [false, true] {
        let names: Vec<String> = (0..100)
            .map(|i| {
                if same {
                    format!("s-{i}")
                } else {
                    format!("c-{rank}-{i}")
                }
            })
            .collect();
        let how = if same { "same names" } else { "distinct names" };
        let mut single = 0.0;
        for &k in &counts {
            world.barrier();
            let mine = if rank < k {
                let t = Instant::now();
                let mut pairs = 0u64;
                let mut lat = Vec::new();
                while t.elapsed().as_secs_f64() < seconds {
                    for name in &names {
                        let s = Instant::now();
                        let b = alloc.allocate(name, 64).unwrap();
                        lat.push(s.elapsed());
                        alloc.deallocate(b).unwrap();
                        pairs += 1;
                    }
                }
                let (med, p99) = percentiles(&mut lat);
                (pairs as f64 / t.elapsed().as_secs_f64(), med, p99)
            } else {
                (0.0, 0.0, 0.0)
            };
            idle_barrier(ctx);
            let total = sum(world, mine.0);
            let (med, p99) = (max(world, mine.1), max(world, mine.2));
            if k == 1 {
                single = total;
            }
            let variant = format!("{how}, {k} rank{}", if k == 1 { "" } else { "s" });
            let r = &mut ctx.report;
            r.add("contention", &variant, "", "pairs/s", total, "1/s");
            r.add("contention", &variant, "", "vs 1 rank", total / single, "x");
            r.add("contention", &variant, "", "allocate median", med, "ns");
            r.add("contention", &variant, "", "allocate p99", p99, "ns");
        }
    }
    ctx.rm.remove_allocator("SHARED::contention");
}

fn pss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// Reads every value `passes` times; returns the sum and the fastest pass in seconds (the
/// fastest, because with more ranks than cores a pass can lose its core halfway).
fn read_all(values: &[u64], passes: usize) -> (u64, f64) {
    let mut acc = 0u64;
    let mut best = f64::INFINITY;
    for _ in 0..passes {
        let t = Instant::now();
        acc = acc.wrapping_add(values.iter().fold(0u64, |a, &v| a.wrapping_add(v)));
        best = best.min(t.elapsed().as_secs_f64());
    }
    (std::hint::black_box(acc), best)
}

/// Cases 4 and 5: node Pss and read bandwidth of a shared table against per-rank copies.
pub fn memory_and_bandwidth(ctx: &mut Ctx) {
    let world = ctx.world;
    let node = ctx.rm.node_communicator();
    let mib = if ctx.quick { 64 } else { 256 };
    let len = (mib * MIB / 8) as usize;
    let passes = if ctx.quick { 3 } else { 6 };
    let fill = |t: &mut [u64]| t.iter_mut().enumerate().for_each(|(i, v)| *v = i as u64);
    let label = format!("{mib} MiB");

    // Before make_resource: ranks map their share of the pages while reserving it.
    let before = pss_bytes();
    let alloc = ctx
        .rm
        .make_resource("SHARED::table", Traits::new((mib + 1) * MIB))
        .expect("make_resource");
    let table = alloc
        .get_or_init::<u64>("table", len, fill)
        .expect("get_or_init");
    world.barrier();
    let (sum_shared, t_shared) = read_all(&table, passes);
    world.barrier();
    let shared_pss = sum(node, pss_bytes() - before);
    drop(table);
    ctx.rm.remove_allocator("SHARED::table");
    drop(alloc);

    let before = pss_bytes();
    let mut private = vec![0u64; len];
    fill(&mut private);
    world.barrier();
    let (sum_private, t_private) = read_all(&private, passes);
    world.barrier();
    let private_pss = sum(node, pss_bytes() - before);
    drop(private);
    assert_eq!(sum_shared, sum_private);

    let gib = (1u64 << 30) as f64;
    ctx.report.add(
        "memory",
        "one copy per rank",
        &label,
        "node Pss",
        private_pss / gib,
        "GiB",
    );
    ctx.report.add(
        "memory",
        "nodeshm",
        &label,
        "node Pss",
        shared_pss / gib,
        "GiB",
    );
    ctx.report.add(
        "memory",
        "nodeshm / per-rank",
        &label,
        "ratio",
        shared_pss / private_pss,
        "x",
    );
    let bytes = (len * 8) as f64;
    let per_rank = |t: f64| sum(world, bytes / t / 1e9) / world.size() as f64;
    let (bw_shared, bw_private) = (per_rank(t_shared), per_rank(t_private));
    ctx.report.add(
        "bandwidth",
        "private copy",
        &label,
        "best pass per rank",
        bw_private,
        "GB/s",
    );
    ctx.report.add(
        "bandwidth",
        "nodeshm shared",
        &label,
        "best pass per rank",
        bw_shared,
        "GB/s",
    );
    ctx.report.add(
        "bandwidth",
        "shared / private",
        &label,
        "ratio",
        bw_shared / bw_private,
        "x",
    );
}

/// Placement: random 8-byte reads over a shared table with 4 KiB pages against transparent huge
/// pages (needs a tmpfs mounted with huge=always or huge=advise: `--huge-dir`).
pub fn random_access(ctx: &mut Ctx) {
    let world = ctx.world;
    let mib = if ctx.quick { 256 } else { 1024 };
    let reads = if ctx.quick { 2_000_000 } else { 10_000_000 };
    let len = (mib * MIB / 8) as usize;
    let mut variants = vec![("4 KiB pages", None)];
    match &ctx.huge_dir {
        Some(dir) => variants.push(("transparent huge pages", Some(dir.clone()))),
        None => {
            if world.rank() == 0 {
                println!("\n(random access with huge pages skipped: pass --huge-dir <tmpfs mounted huge=always>)");
            }
        }
    }
    for (variant, dir) in variants {
        let name = format!("SHARED::random-{}", dir.is_some());
        let mut traits = Traits::new(mib * MIB + 4 * MIB).prefault(true);
        if let Some(d) = &dir {
            traits = traits.dir(d).huge_pages(HugePages::Transparent);
        }
        let alloc = ctx.rm.make_resource(&name, traits).expect("make_resource");
        let table = alloc
            .get_or_init::<u64>("table", len, |t| {
                t.iter_mut().enumerate().for_each(|(i, v)| *v = i as u64)
            })
            .expect("get_or_init");
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ world.rank() as u64;
        world.barrier();
        let t = Instant::now();
        let mut acc = 0u64;
        for _ in 0..reads {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            acc = acc.wrapping_add(table[(x >> 17) as usize % len]);
        }
        std::hint::black_box(acc);
        let ns = t.elapsed().as_nanos() as f64 / reads as f64;
        let ns = sum(world, ns) / world.size() as f64;
        let placement = alloc.placement();
        let label = format!("{mib} MiB");
        ctx.report
            .add("random access", variant, &label, "ns/read", ns, "ns");
        ctx.report.add(
            "random access",
            variant,
            &label,
            "page size",
            placement.page_size as f64 / 1024.0,
            "KiB",
        );
        if let Some(p) = placement.prefault {
            ctx.report.add(
                "random access",
                variant,
                &label,
                "prefault",
                p.as_secs_f64() * 1e3,
                "ms",
            );
        }
        drop(table);
        ctx.rm.remove_allocator(&name);
        drop(alloc);
        world.barrier();
    }
}
