//! MPI scenarios, each launched by this binary itself through `scripts/mpi-launch.sh` (Open MPI
//! or MPICH, `mpirun` or `srun`; 1, 2 and 4 ranks, fake sockets, simulated nodes, crashes). A
//! scenario passes when every rank printed its "ok" line and the job's exit status is what the
//! scenario expects.
//!
//! | file | scenarios |
//! |---|---|
//! | `basic.rs` | every manager call on one node with 1, 2 and 4 ranks; a sub-communicator |
//! | `topology.rs` | socket and NUMA scope on fake topologies, unbound ranks, two simulated nodes |
//! | `failures.rs` | mismatched arguments, a full backing directory, a killed rank, two jobs |
//! | `placement.rs` | NUMA binding and fallback, huge pages, prefault |

mod basic;
mod failures;
mod placement;
#[path = "../support/mod.rs"]
mod support;
mod topology;

use std::path::PathBuf;
use std::time::Duration;

use basic::*;
use failures::*;
use placement::*;
use support::launch::Job;
use topology::*;

const LIMIT: Duration = Duration::from_secs(120);

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn topology(file: &str) -> String {
    manifest()
        .join("tests/topologies")
        .join(file)
        .display()
        .to_string()
}

fn expect_ok(np: usize, (ok, out): (bool, String)) -> String {
    let oks = out.lines().filter(|l| l.starts_with("ok rank")).count();
    assert!(
        ok && oks == np,
        "expected {np} ranks ok, got {oks} (exit ok: {ok}):\n{out}"
    );
    out
}

/// Runs `job` (ranks of this binary playing a role) and expects every rank's "ok" line.
fn run(np: usize, job: Job) -> String {
    expect_ok(np, support::run_with_timeout(&mut job.command(), LIMIT))
}

/// `job` on a fake topology from `tests/topologies/`.
fn scoped(job: Job, xml: &str) -> Job {
    job.env("HWLOC_XMLFILE", topology(xml))
        .env("HWLOC_THISSYSTEM", "1")
}

fn nothing_left_in_dev_shm() {
    let left = support::leftovers(&support::marker());
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

fn main() {
    support::main(
        &[
            ("basic", role_basic),
            ("subcomm", role_subcomm),
            ("scoped", role_scoped),
            ("unbound", role_unbound),
            ("nodes", role_nodes),
            ("mismatch", role_mismatch),
            ("full", role_full),
            ("killed", role_killed),
            ("twojobs", role_twojobs),
            ("placement", role_placement),
        ],
        &[
            ("basic_1_rank", basic_1_rank),
            ("basic_2_ranks", basic_2_ranks),
            ("basic_4_ranks", basic_4_ranks),
            (
                "manager_on_a_sub_communicator",
                manager_on_a_sub_communicator,
            ),
            (
                "socket_scope_two_fake_packages",
                socket_scope_two_fake_packages,
            ),
            (
                "numa_scope_two_fake_numa_nodes",
                numa_scope_two_fake_numa_nodes,
            ),
            (
                "unbound_ranks_get_a_binding_error",
                unbound_ranks_get_a_binding_error,
            ),
            ("two_simulated_nodes", two_simulated_nodes),
            (
                "mismatched_arguments_fail_everywhere",
                mismatched_arguments_fail_everywhere,
            ),
            (
                "full_backing_directory_fails_everywhere",
                full_backing_directory_fails_everywhere,
            ),
            ("killed_rank_leaks_nothing", killed_rank_leaks_nothing),
            ("two_jobs_never_share", two_jobs_never_share),
            (
                "placement_auto_binds_to_node_0",
                placement_auto_binds_to_node_0,
            ),
            (
                "placement_auto_falls_back_and_bind_fails_on_fake_numa_node",
                placement_auto_falls_back_and_bind_fails_on_fake_numa_node,
            ),
            (
                "placement_transparent_huge_pages_on_huge_tmpfs",
                placement_transparent_huge_pages_on_huge_tmpfs,
            ),
            (
                "placement_required_huge_pages_on_hugetlbfs",
                placement_required_huge_pages_on_hugetlbfs,
            ),
            (
                "prefault_maps_every_page_on_every_rank",
                prefault_maps_every_page_on_every_rank,
            ),
            ("nothing_left_in_dev_shm", nothing_left_in_dev_shm),
        ],
    );
}
