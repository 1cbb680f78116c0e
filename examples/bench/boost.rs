//! Boost.Interprocess as a peer, inside the same benchmark run: rank 0 runs `boost_peer`
//! (examples/bench/boost_peer.cpp, built by scripts/bench.sh) while the other ranks wait
//! without spinning, so the peer has the cores to itself as nodeshm had.

use mpi::traits::*;

use crate::cases::{idle_barrier, Ctx};

/// Boost's named allocation (`find_or_construct` of the same names in every process) with 1
/// and with as many processes as ranks, at 1, 1,000 and 100,000 live names.
pub fn named(ctx: &mut Ctx, peer: &str) {
    let samples = if ctx.quick { 2_000 } else { 20_000 };
    let ranks = ctx.world.size();
    for live in [1u32, 1_000, 100_000] {
        for procs in [1, ranks] {
            if ctx.world.rank() == 0 {
                let out = std::process::Command::new(peer)
                    .args([procs.to_string(), samples.to_string(), live.to_string()])
                    .output();
                match out {
                    Ok(out) if out.status.success() => record(ctx, &out.stdout, live),
                    Ok(out) => eprintln!(
                        "boost peer failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    Err(e) => eprintln!("boost peer {peer}: {e}"),
                }
            }
            idle_barrier(ctx);
        }
    }
}

fn record(ctx: &mut Ctx, stdout: &[u8], live: u32) {
    for line in String::from_utf8_lossy(stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(procs), Some(op)) = (v["processes"].as_i64(), v["op"].as_str()) else {
            continue;
        };
        let variant = if procs == 1 {
            format!("Boost {op}, 1 process")
        } else {
            format!("Boost {op}, {procs} processes, same names")
        };
        let param = format!("{live} live");
        for metric in ["median", "p99"] {
            if let Some(x) = v[format!("{metric}_ns")].as_f64() {
                ctx.report.add("named", &variant, &param, metric, x, "ns");
            }
        }
    }
}
