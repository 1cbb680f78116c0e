//! Several processes allocating the same names at once, without MPI: what the benchmark's
//! "N ranks, same names" rows measure, with who created how many names, for studying the
//! contended path on its own (perf, pinning).
//!
//!     cargo run --release --example same_names [-- --procs N] [--names N] [--scatter N]
//!
//! Each process allocates `probe-0`, `probe-1`, ... in order (find-or-create), then all release
//! them. Prints each process's median and p99 allocate latency and how many names it created.
//! `--scatter N`: first make N other names and release them in a random order, so that the
//! new names reuse parked blocks spread over the heap, as in a long-running code.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nodeshm::arena::{Arena, Options, Unlink};

fn arg(flag: &str) -> Option<usize> {
    std::env::args()
        .skip_while(|a| a != flag)
        .nth(1)
        .and_then(|n| n.parse().ok())
}

/// Counts `slot` up and waits (sleeping, bounded) until it reaches `target`.
fn rendezvous(counter: &std::sync::atomic::AtomicU64, target: u64) {
    counter.fetch_add(1, Ordering::AcqRel);
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::Acquire) < target {
        assert!(Instant::now() < deadline, "peers did not arrive in 60 s");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Makes `n` names and releases them in a random order (a fixed-seed generator): their
/// slots and blocks are then parked in no particular order.
fn scatter(arena: &Arena, n: usize) -> nodeshm::Result<()> {
    let mut blocks = (0..n)
        .map(|i| arena.allocate(&format!("scatter-{i}"), 64))
        .collect::<nodeshm::Result<Vec<_>>>()?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while !blocks.is_empty() {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let i = (x >> 33) as usize % blocks.len();
        arena.deallocate(blocks.swap_remove(i))?;
    }
    Ok(())
}

fn main() -> nodeshm::Result<()> {
    let procs = arg("--procs").unwrap_or(2) as u64;
    let count = arg("--names").unwrap_or(20_000);
    let child = std::env::args().skip_while(|a| a != "--child").nth(1);
    let arena_name = match &child {
        Some(n) => n.clone(),
        None => format!("nodeshm-same-{}", std::process::id()),
    };
    let arena = match &child {
        Some(n) => Arena::attach(n, Duration::from_secs(10))?,
        None => Arena::create(
            &arena_name,
            &Options::new(256 << 20)
                .unlink(Unlink::AfterAttach {
                    peers: procs as u32,
                })
                .expected_names(1 << 18),
        )?,
    };
    if child.is_none() {
        if let Some(n) = arg("--scatter") {
            scatter(&arena, n)?;
        }
    }
    let sync = arena.allocate("sync", 16)?;
    let words = sync.as_atomic_u64();
    if child.is_none() {
        let me = std::env::current_exe().expect("own path");
        let kids: Vec<_> = (0..procs)
            .map(|_| {
                Command::new(&me)
                    .args(["--child", &arena_name])
                    .args(["--procs", &procs.to_string()])
                    .args(["--names", &count.to_string()])
                    .spawn()
                    .expect("spawning a child")
            })
            .collect();
        for mut k in kids {
            assert!(k.wait().expect("waiting").success(), "a child failed");
        }
        arena.deallocate(sync)?;
        arena.verify()?;
        return Ok(());
    }
    let names: Vec<String> = (0..count).map(|i| format!("probe-{i}")).collect();
    let mut lat = Vec::with_capacity(count);
    let mut held = Vec::with_capacity(count);
    rendezvous(&words[0], procs);
    for n in &names {
        let t = Instant::now();
        let b = arena.allocate(n, 64)?;
        lat.push(t.elapsed());
        held.push(b);
    }
    let created = held.iter().filter(|b| b.created()).count();
    let mut made: Vec<Duration> = (0..count)
        .filter(|&i| held[i].created())
        .map(|i| lat[i])
        .collect();
    let mut found: Vec<Duration> = (0..count)
        .filter(|&i| !held[i].created())
        .map(|i| lat[i])
        .collect();
    rendezvous(&words[1], procs);
    for b in held {
        arena.deallocate(b)?;
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).map_or(0, |d| d.as_nanos())
    };
    lat.sort();
    let at = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_nanos();
    println!(
        "pid {:>7}: median {:>6} ns  p99 {:>7} ns  created {created:>6} of {count} \
         (median {:>6} ns; found: {:>6} ns)",
        std::process::id(),
        at(0.5),
        at(0.99),
        median(&mut made),
        median(&mut found),
    );
    arena.deallocate(sync)?;
    Ok(())
}
