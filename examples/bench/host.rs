//! What the host lets one core do at the moment of a measurement. On this project's VMs the
//! one-rank latencies move between two levels (an allocate 110-120 ns or 160-220 ns) from
//! one few-millisecond stretch to the next, with the same code, the same process and the
//! same CPU, while a dependent multiply chain, a pointer chase within L2, an atomic
//! compare-and-swap and the clock read keep their speed: the host takes load/store
//! throughput from the core (a busy sibling hardware thread behaves so). A loop bound by
//! that throughput, timed next to each one-rank row, shows which level a row was measured
//! in (docs/performance-notes.md, "The host's two speeds for one core").
//!
//! The rows at 100,000 live names depend on a second thing the host shares out: how much of
//! the last-level cache this VM keeps (the directory in use is 0.9 MB then). A pointer chase
//! over 4 MiB took 12-26 ns a step in some minutes and 72-176 in others.

use std::hint::black_box;
use std::time::Instant;

/// Words the loop walks: 16 KiB, within every L1 data cache.
const WORDS: usize = 2048;

/// Passes over the words per timed sample (about 0.2 ms each on these hosts).
const PASSES: usize = 400;

/// Bytes [`chase_ns`] walks: a little more than the named rows' working set at 100,000 names.
const CHASE_BYTES: usize = 4 << 20;

/// Steps of [`chase_ns`] per timed sample.
const CHASE_STEPS: usize = 100_000;

/// Nanoseconds per step of a chase of dependent loads over 4 MiB of lines in a scattered
/// order (a fixed-seed shuffle), median of 3 samples: where this VM's share of the caches
/// ends (12-26 ns a step when 4 MiB stay in them on these hosts, 120-230 from memory).
pub fn chase_ns() -> f64 {
    let lines = CHASE_BYTES / 64;
    // One u64 per line, 8 a line: next[i * 8] is the line after line i.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..lines).rev() {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    let mut next = vec![0usize; lines * 8];
    for i in 0..lines {
        next[order[i] * 8] = order[(i + 1) % lines] * 8;
    }
    let mut at = 0;
    for _ in 0..lines {
        at = next[at];
    }
    let samples: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CHASE_STEPS {
                at = black_box(next[at]);
            }
            start.elapsed().as_nanos() as f64 / CHASE_STEPS as f64
        })
        .collect();
    black_box(at);
    median(samples)
}

/// Nanoseconds per step of a loop of four independent loads and one store over 16 KiB,
/// median of 5 samples of 0.2 ms each: about 1.1 when the core has its full throughput on
/// these hosts, 1.5-1.9 when the host takes part of it. Plain work on private memory: it
/// touches nothing shared and needs no other rank.
pub fn core_loop_ns() -> f64 {
    let mut words: Vec<u64> = (0..WORDS as u64).collect();
    let samples: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
            for _ in 0..PASSES {
                let w = black_box(&mut words[..]);
                for i in (0..WORDS).step_by(4) {
                    a = a.wrapping_add(w[i]);
                    b ^= w[i + 1];
                    c = c.wrapping_add(w[i + 2]);
                    d ^= w[i + 3];
                    w[(i * 7) % WORDS] = w[(i * 7) % WORDS].wrapping_add(1);
                }
            }
            black_box((a, b, c, d));
            start.elapsed().as_nanos() as f64 / (PASSES * WORDS / 4) as f64
        })
        .collect();
    median(samples)
}

/// The middle of an odd number of samples.
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
