//! Scope instances: socket and NUMA scope on fake two-socket topologies, unbound ranks, two
//! simulated nodes.

use std::process::Command;
use std::sync::atomic::Ordering;

use mpi::traits::*;
use nodeshm::{ErrorCode, ResourceManager, Scope, Traits};

use crate::support::{
    self,
    launch::{Binding, Job},
};
use crate::{expect_ok, manifest, run, scoped, LIMIT};

/// Socket or NUMA scope on a fake two-socket topology: two arenas, two ranks each.
pub fn role_scoped() {
    let scope = match support::role_arg().as_str() {
        "numa" => Scope::Numa,
        _ => Scope::Socket,
    };
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rank = world.rank();
    let rm = ResourceManager::new(&world).unwrap();
    let alloc = rm
        .make_resource("SHARED::scoped", Traits::new(4 << 20).scope(scope))
        .unwrap();
    let instance = alloc.scope_instance();
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    assert!(
        cpus.is_set(instance.index).unwrap(),
        "rank {rank} is on {instance} but not bound to CPU {}",
        instance.index
    );
    let comm = alloc.communicator();
    assert_eq!(
        comm.size(),
        2,
        "rank {rank}: {instance} has {} ranks",
        comm.size()
    );
    let block = alloc.allocate("x", 64).unwrap();
    if comm.rank() == 0 {
        block.as_atomic_u64()[0].store(100 + instance.index as u64, Ordering::Release);
    }
    world.barrier();
    assert_eq!(
        block.as_atomic_u64()[0].load(Ordering::Acquire),
        100 + instance.index as u64,
        "writes stay in their {scope}"
    );
    let mut instances = vec![0u64; world.size() as usize];
    world.all_gather_into(&(instance.index as u64), &mut instances[..]);
    assert_eq!(instances.iter().filter(|&&i| i == 0).count(), 2);
    assert_eq!(instances.iter().filter(|&&i| i == 1).count(), 2);
    world.barrier();
    alloc.deallocate(block).unwrap();
    println!("ok rank {rank} {instance}");
}

pub fn socket_scope_two_fake_packages() {
    run(
        4,
        scoped(Job::role(4, "scoped:socket"), "two-packages.xml").bind(Binding::Core),
    );
}

pub fn numa_scope_two_fake_numa_nodes() {
    run(
        4,
        scoped(Job::role(4, "scoped:numa"), "two-packages-two-numa.xml").bind(Binding::Core),
    );
}

/// Unbound ranks asking for socket scope: the same clear error everywhere.
pub fn role_unbound() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rm = ResourceManager::new(&world).unwrap();
    let err = rm
        .make_resource("SHARED::s", Traits::new(1 << 20).scope(Scope::Socket))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Binding, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("rank 0") && msg.contains("span 2 sockets"),
        "{msg}"
    );
    let ours = match (
        support::launch::launcher().as_str(),
        support::launch::mpi().as_str(),
    ) {
        ("srun", _) => "`srun --cpu-bind=cores`",
        (_, "mpich") => "`mpiexec -bind-to core`",
        _ => "`mpirun --bind-to core`",
    };
    assert!(
        msg.contains(&format!("this job's launcher wants {ours}"))
            && msg.contains("--bind-to core")
            && msg.contains("-bind-to core")
            && msg.contains("--cpu-bind=cores"),
        "{msg}"
    );
    // The manager is still usable afterwards.
    let ok = rm.make_resource("SHARED::n", Traits::new(1 << 20)).unwrap();
    assert_eq!(ok.communicator().size(), world.size());
    println!("ok rank {} error: {msg}", world.rank());
}

pub fn unbound_ranks_get_a_binding_error() {
    run(
        4,
        scoped(Job::role(4, "unbound"), "two-packages.xml").bind(Binding::None),
    );
}

/// Two simulated nodes: one arena each, never shared across nodes.
pub fn role_nodes() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rm = ResourceManager::new(&world).unwrap();
    let alloc = rm
        .make_resource("SHARED::nodes", Traits::new(1 << 20))
        .unwrap();
    let comm = alloc.communicator();
    assert_eq!(comm.size(), 2);
    let block = alloc.allocate("leader", 8).unwrap();
    if comm.rank() == 0 {
        block.as_atomic_u64()[0].store(world.rank() as u64 + 1000, Ordering::Release);
    }
    world.barrier();
    let seen = block.as_atomic_u64()[0].load(Ordering::Acquire);
    let mut leaders = vec![0u64; world.size() as usize];
    world.all_gather_into(&seen, &mut leaders[..]);
    let mut distinct = leaders.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        2,
        "each simulated node has its own arena: {leaders:?}"
    );
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    world.barrier();
    alloc.deallocate(block).unwrap();
    println!(
        "ok rank {} on {host} sees leader {}",
        world.rank(),
        seen - 1000
    );
}

pub fn two_simulated_nodes() {
    if support::launch::under_srun() {
        println!("skipped: simulated nodes are started by mpirun, not srun");
        return;
    }
    if support::launch::mpi() != "openmpi" {
        // MPICH (ch4:ucx) over TCP hangs in MPI_Finalize in about one run of four here: one rank
        // flushes its UCX TCP endpoints while its peers already wait in the PMI barrier and no
        // longer progress UCX (openucx/ucx#8738). Not ours to fix; Open MPI runs it reliably.
        println!("skipped: simulated nodes run under Open MPI only (UCX TCP finalize hang)");
        return;
    }
    let script = manifest().join("tests/tools/mpirun-nodes.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .args([
            "-N",
            "2",
            "-n",
            "2",
            "--mpi-arg",
            "-x",
            "--mpi-arg",
            support::ROLE_ENV,
            "--",
        ])
        .arg(std::env::current_exe().unwrap())
        .env(support::ROLE_ENV, "nodes");
    let out = expect_ok(4, support::run_with_timeout(&mut cmd, LIMIT));
    assert!(
        out.contains("on simnode0") && out.contains("on simnode1"),
        "{out}"
    );
}
