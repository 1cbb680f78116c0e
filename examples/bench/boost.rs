//! Boost.Interprocess as a peer, inside the same benchmark run: rank 0 runs `boost_peer`
//! (examples/bench/boost_peer.cpp, built by scripts/bench.sh) while the other ranks wait
//! without spinning, so the peer has the cores to itself as nodeshm had. Its process p runs on
//! the CPUs rank p is bound to, as the ranks it is compared with.

use mpi::traits::*;

use crate::cases::{idle_barrier, Ctx};

/// Boost's named allocation (`find_or_construct` of the same names in every process) with 1
/// and with as many processes as ranks, at 1, 1,000 and 100,000 live names.
pub fn named(ctx: &mut Ctx, peer: &str) {
    let samples = if ctx.quick { 2_000 } else { 20_000 };
    let ranks = ctx.world.size();
    let pins = rank_cpus(ctx);
    for live in [1u32, 1_000, 100_000] {
        for procs in [1, ranks] {
            if ctx.world.rank() == 0 {
                let mut command = std::process::Command::new(peer);
                command.args([procs.to_string(), samples.to_string(), live.to_string()]);
                if procs > 1 {
                    command.args(&pins);
                }
                let out = command.output();
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

/// Collective over the world: every rank's CPU binding as a list ("0,1"), in rank order, for
/// rank 0 to pin the peer's processes the same way (forked by rank 0, they would otherwise all
/// inherit its binding: one core when the job binds each rank to a core).
fn rank_cpus(ctx: &Ctx) -> Vec<String> {
    const WORDS: usize = 16;
    let mut mine = [0u64; WORDS];
    if let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        for cpu in 0..(WORDS * 64).min(nix::sched::CpuSet::count()) {
            if set.is_set(cpu).unwrap_or(false) {
                mine[cpu / 64] |= 1 << (cpu % 64);
            }
        }
    }
    let mut all = vec![0u64; WORDS * ctx.world.size() as usize];
    ctx.world.all_gather_into(&mine[..], &mut all[..]);
    let lists: Vec<String> = all
        .chunks(WORDS)
        .map(|words| {
            let cpus: Vec<String> = (0..WORDS * 64)
                .filter(|&cpu| words[cpu / 64] >> (cpu % 64) & 1 == 1)
                .map(|cpu| cpu.to_string())
                .collect();
            cpus.join(",")
        })
        .collect();
    // A binding that could not be read: no pins at all rather than a partial placement.
    if lists.iter().any(String::is_empty) {
        return Vec::new();
    }
    lists
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
