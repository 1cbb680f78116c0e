//! The benchmark's named-allocation sequence for two ranks, replayed in one process without
//! MPI, with the two ranks' calls in a chosen order: how the order in which names were made
//! and released changes what later new names cost when they reuse the parked slots and blocks
//! (README, "Why some targets are not met everywhere"). Until layout 11 the interleaved order
//! cost up to twice the blocky one; parked blocks now go out in address order after both.
//!
//!     cargo run --release --example recycle_order [-- --order blocky|interleaved] [--names N]
//!
//! As `examples/bench` does with 1 live name: rank 0 alone makes and releases N probe names,
//! then makes N new names and releases them; both ranks ask for the same N names (the first to
//! ask makes a name, the other finds it) and release them; both make N distinct names each
//! and release them.
//! Then, with 1,000 live names, rank 0 makes N new names (timed) and releases them (timed).
//! `--order blocky` runs all of rank 0's calls of a row before rank 1's; `interleaved` (the
//! default) gives them turns of 1-4 calls, as two ranks on two cores racing for the arena's
//! lock do. Pin it (`taskset -c 0`) and alternate the orders: the host's noise is larger
//! than one run shows.

use std::time::{Duration, Instant};

use nodeshm::arena::{Arena, Block, Options, Unlink};

fn arg(flag: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != flag).nth(1)
}

/// A fixed-seed generator (xorshift), so that every run replays the same calls.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Which rank makes its next call, for `n` calls each.
fn turns(n: usize, interleaved: bool, rng: &mut Rng) -> Vec<usize> {
    let (mut done, mut turns, mut rank) = ([0usize; 2], Vec::with_capacity(2 * n), 0);
    while done[0] < n || done[1] < n {
        let run = if interleaved { 1 + rng.below(4) } else { n };
        for _ in 0..run.min(n - done[rank]) {
            turns.push(rank);
            done[rank] += 1;
        }
        rank ^= 1;
    }
    turns
}

/// One two-rank row: every rank asks for its `n` names (`name(rank, i)`), then releases them,
/// each phase in the turns `turns` gives.
fn two_ranks(
    arena: &Arena,
    n: usize,
    interleaved: bool,
    rng: &mut Rng,
    name: impl Fn(usize, usize) -> String,
) -> nodeshm::Result<()> {
    let mut held: [Vec<Block>; 2] = [Vec::new(), Vec::new()];
    for rank in turns(n, interleaved, rng) {
        let i = held[rank].len();
        held[rank].push(arena.allocate(&name(rank, i), 64)?);
    }
    let mut left = held.map(|v| v.into_iter());
    for rank in turns(n, interleaved, rng) {
        if let Some(b) = left[rank].next() {
            arena.deallocate(b)?;
        }
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> u128 {
    v.sort();
    v[v.len() / 2].as_nanos()
}

fn main() -> nodeshm::Result<()> {
    let n: usize = arg("--names")
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(20_000);
    let order = arg("--order").unwrap_or_else(|| "interleaved".into());
    let interleaved = order != "blocky";
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let arena = Arena::create(
        &format!("nodeshm-recycle-{}", std::process::id()),
        &Options::new(256 << 20)
            .unlink(Unlink::OnLastDetach)
            .expected_names(1 << 18),
    )?;
    let mut live = vec![arena.allocate("live-0", 64)?];
    for i in 0..n {
        let b = arena.allocate(&format!("probe-{i}"), 64)?;
        arena.deallocate(b)?;
    }
    let fresh = (0..n)
        .map(|i| arena.allocate(&format!("fresh-{i}"), 64))
        .collect::<nodeshm::Result<Vec<_>>>()?;
    for b in fresh {
        arena.deallocate(b)?;
    }
    two_ranks(&arena, n, interleaved, &mut rng, |_, i| {
        format!("probe-{i}")
    })?;
    two_ranks(&arena, n, interleaved, &mut rng, |rank, i| {
        format!("probe-{rank}-{i}")
    })?;
    while live.len() < 1_000 {
        live.push(arena.allocate(&format!("live-{}", live.len()), 64)?);
    }
    let (mut make, mut release, mut held) = (Vec::new(), Vec::new(), Vec::with_capacity(n));
    for i in 0..n {
        let name = format!("fresh-{i}");
        let t = Instant::now();
        held.push(arena.allocate(&name, 64)?);
        make.push(t.elapsed());
    }
    for b in held {
        let t = Instant::now();
        arena.deallocate(b)?;
        release.push(t.elapsed());
    }
    println!(
        "order {order:>11}: new names at 1,000 live {:>4} ns, their release {:>4} ns",
        median(make),
        median(release)
    );
    for b in live {
        arena.deallocate(b)?;
    }
    Ok(())
}
