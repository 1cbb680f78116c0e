//! MPI scenarios, each launched by this binary itself through `scripts/mpi-launch.sh` (Open MPI
//! or MPICH, `mpirun` or `srun`; 1, 2 and 4 ranks, fake sockets, simulated nodes, crashes). A
//! scenario passes when every rank printed its "ok" line and the job's exit status is what the
//! scenario expects.

mod support;

use support::launch::{Binding, Job};

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mpi::traits::*;
use nodeshm::{ErrorCode, HugePages, NumaPolicy, ResourceManager, Scope, Traits};

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

/// Everything the manager does on one node, with `np` ranks.
fn role_basic() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let rm = ResourceManager::new(&world).unwrap();
    let alloc = rm
        .make_resource("SHARED::basic", Traits::new(8 << 20))
        .unwrap();
    let comm = alloc.communicator();
    assert_eq!(
        (comm.size(), comm.rank()),
        (size, rank),
        "one node: the allocator spans all"
    );
    assert_eq!(alloc.name(), "SHARED::basic");
    assert_eq!(alloc.scope_instance().scope, Scope::Node);
    assert_eq!(rm.allocators(), vec!["SHARED::basic".to_string()]);
    // The ranks reserved their shares in parallel: every page exists before anyone allocates.
    assert_eq!(
        alloc.arena().reserved_bytes().unwrap(),
        alloc.arena().size()
    );
    assert!(rm.get_allocator("SHARED::basic").is_some() && rm.get_allocator("SHARED::x").is_none());

    // Same name, same block: rank 0 writes, all read.
    let block = alloc.allocate("shared", 4096).unwrap();
    if rank == 0 {
        for (i, w) in block.as_atomic_u64().iter().enumerate() {
            w.store(i as u64 * 3 + 7, Ordering::Release);
        }
    }
    comm.barrier();
    for (i, w) in block.as_atomic_u64().iter().enumerate() {
        assert_eq!(w.load(Ordering::Acquire), i as u64 * 3 + 7);
    }
    let mut offsets = vec![0u64; size as usize];
    comm.all_gather_into(&block.offset(), &mut offsets[..]);
    assert!(offsets.iter().all(|&o| o == block.offset()));
    let info = alloc.arena().lookup("shared").unwrap().unwrap();
    assert_eq!(info.refcount, size as u64, "every rank holds one reference");
    comm.barrier();

    // Errors are per rank and leave everything intact.
    assert_eq!(
        alloc.allocate("shared", 8192).unwrap_err().code(),
        ErrorCode::SizeMismatch
    );
    let full = alloc
        .allocate(&format!("too-big-{rank}"), 9 << 20)
        .unwrap_err();
    assert_eq!(full.code(), ErrorCode::OutOfSpace, "{full}");
    let found = alloc.find("shared").unwrap().expect("exists");
    assert_eq!(found.offset(), block.offset());
    assert!(alloc.find("missing").unwrap().is_none());
    alloc.deallocate(found).unwrap();
    alloc.deallocate(block).unwrap();
    assert_eq!(
        alloc.deallocate(block).unwrap_err().code(),
        ErrorCode::NotHeld
    );
    comm.barrier();
    assert!(
        alloc.arena().lookup("shared").unwrap().is_none(),
        "the last release freed it"
    );
    assert_eq!(alloc.stats().unwrap().live_blocks, 0);
    comm.barrier();

    // get_or_init: rank 0 fills, everyone sees the same table.
    let table = alloc
        .get_or_init::<f64>("table", 10_000, |t| {
            for (i, v) in t.iter_mut().enumerate() {
                *v = i as f64 * 0.5;
            }
        })
        .unwrap();
    assert_eq!(table.len(), 10_000);
    assert_eq!(table.iter().sum::<f64>(), 0.5 * (9_999.0 * 10_000.0 / 2.0));
    assert!(alloc.actual_size().unwrap() >= 80_000);
    drop(table);

    // The user lock serialises a read-modify-write across ranks.
    let counter = alloc.allocate("counter", 8).unwrap();
    for _ in 0..100 {
        let guard = alloc.lock().unwrap();
        let w = &counter.as_atomic_u64()[0];
        w.store(w.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        drop(guard);
    }
    comm.barrier();
    assert_eq!(
        counter.as_atomic_u64()[0].load(Ordering::Acquire),
        100 * size as u64
    );
    comm.barrier();
    alloc.deallocate(counter).unwrap();

    // Collective errors: the same on every rank, nobody hangs.
    let again = rm
        .make_resource("SHARED::basic", Traits::new(1 << 20))
        .unwrap_err();
    assert_eq!(again.code(), ErrorCode::AlreadyExists, "{again}");
    let bad = rm
        .make_resource("no-prefix", Traits::new(1 << 20))
        .unwrap_err();
    assert_eq!(bad.code(), ErrorCode::InvalidName, "{bad}");
    let zero = rm
        .make_resource("SHARED::zero", Traits::new(0))
        .unwrap_err();
    assert_eq!(zero.code(), ErrorCode::InvalidArgument, "{zero}");
    let nul = rm
        .make_resource("SHARED::a\0b", Traits::new(1 << 20))
        .unwrap_err();
    assert_eq!(nul.code(), ErrorCode::InvalidName, "{nul}");
    let huge = rm
        .make_resource("SHARED::huge", Traits::new(u64::MAX))
        .unwrap_err();
    assert_eq!(huge.code(), ErrorCode::InvalidArgument, "{huge}");
    assert!(huge.to_string().contains("128.0 TiB"), "{huge}");
    let open = rm
        .make_resource("SHARED::open", Traits::new(1 << 20).mode(0o4777))
        .unwrap_err();
    assert_eq!(open.code(), ErrorCode::InvalidArgument, "{open}");

    // Dropping the last handle frees the allocator: its arena goes, and the name can be made
    // again (new shm objects), on every rank.
    let once = rm
        .make_resource(
            "SHARED::again",
            Traits::new(4 << 20).unlink(nodeshm::UnlinkPolicy::OnLastDetach),
        )
        .unwrap();
    let first_path = once.shm_path().to_path_buf();
    let handle = rm
        .get_allocator("SHARED::again")
        .expect("found while alive");
    assert!(first_path.exists());
    drop((once, handle));
    world.barrier();
    assert!(
        !first_path.exists(),
        "{} outlived every handle",
        first_path.display()
    );
    assert!(rm.get_allocator("SHARED::again").is_none());
    assert!(!rm.allocators().contains(&"SHARED::again".to_string()));
    let twice = rm
        .make_resource("SHARED::again", Traits::new(4 << 20))
        .unwrap();
    assert_ne!(twice.shm_path(), first_path);
    assert_eq!(twice.traits().size, 4 << 20);
    drop(twice);

    // The arena's name is gone once all ranks attached (default unlink policy).
    assert!(
        !alloc.shm_path().exists(),
        "{} still exists",
        alloc.shm_path().display()
    );
    println!("ok rank {rank}");
}

fn basic_1_rank() {
    run(1, Job::role(1, "basic"));
}
fn basic_2_ranks() {
    run(2, Job::role(2, "basic"));
}
fn basic_4_ranks() {
    run(4, Job::role(4, "basic"));
}

/// A manager on a sub-communicator (not the world): each half of the ranks gets its own
/// allocators, communicators and job token.
fn role_subcomm() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let half = world
        .split_by_color(mpi::topology::Color::with_value(world.rank() % 2))
        .unwrap();
    let rm = ResourceManager::new(&half).unwrap();
    let alloc = rm
        .make_resource("SHARED::half", Traits::new(1 << 20))
        .unwrap();
    assert_eq!(alloc.communicator().size(), half.size());
    let block = alloc.allocate("owner", 8).unwrap();
    if alloc.communicator().rank() == 0 {
        block.as_atomic_u64()[0].store(1 + (world.rank() % 2) as u64, Ordering::Release);
    }
    world.barrier();
    assert_eq!(
        block.as_atomic_u64()[0].load(Ordering::Acquire),
        1 + (world.rank() % 2) as u64
    );
    let mut tokens = vec![0u64; world.size() as usize];
    world.all_gather_into(&rm.job_token(), &mut tokens[..]);
    assert_ne!(tokens[0], tokens[1], "the two managers share a job token");
    assert_eq!(tokens[0], tokens[2]);
    world.barrier();
    alloc.deallocate(block).unwrap();
    println!("ok rank {} in half {}", world.rank(), world.rank() % 2);
}

fn manager_on_a_sub_communicator() {
    run(4, Job::role(4, "subcomm"));
}

/// Socket or NUMA scope on a fake two-socket topology: two arenas, two ranks each.
fn role_scoped() {
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

/// `job` on a fake topology from `tests/topologies/`.
fn scoped(job: Job, xml: &str) -> Job {
    job.env("HWLOC_XMLFILE", topology(xml))
        .env("HWLOC_THISSYSTEM", "1")
}

fn socket_scope_two_fake_packages() {
    run(
        4,
        scoped(Job::role(4, "scoped:socket"), "two-packages.xml").bind(Binding::Core),
    );
}

fn numa_scope_two_fake_numa_nodes() {
    run(
        4,
        scoped(Job::role(4, "scoped:numa"), "two-packages-two-numa.xml").bind(Binding::Core),
    );
}

/// Unbound ranks asking for socket scope: the same clear error everywhere.
fn role_unbound() {
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

fn unbound_ranks_get_a_binding_error() {
    run(
        4,
        scoped(Job::role(4, "unbound"), "two-packages.xml").bind(Binding::None),
    );
}

/// Two simulated nodes: one arena each, never shared across nodes.
fn role_nodes() {
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

fn two_simulated_nodes() {
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

/// Ranks that disagree about the arguments of a collective call.
fn role_mismatch() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rank = world.rank();
    let rm = ResourceManager::new(&world).unwrap();
    let size = if rank == 1 { 2 << 20 } else { 1 << 20 };
    let err = rm
        .make_resource("SHARED::m", Traits::new(size))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(err.to_string().contains("rank 1 passed"), "{err}");
    let name = if rank == 2 {
        "SHARED::other"
    } else {
        "SHARED::m"
    };
    let err = rm.make_resource(name, Traits::new(1 << 20)).unwrap_err();
    assert!(err.to_string().contains("rank 2 passed"), "{err}");
    assert!(rm.allocators().is_empty());
    println!("ok rank {rank}");
}

fn mismatched_arguments_fail_everywhere() {
    run(4, Job::role(4, "mismatch"));
}

/// A leader whose backing directory is too small: every rank gets its error.
fn role_full() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rm = ResourceManager::new(&world).unwrap();
    let dir = support::role_arg();
    let err = rm
        .make_resource("SHARED::full", Traits::new(64 << 20).dir(&dir))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoSpaceInBacking, "{err}");
    // Every rank can match the typed error with its fields, not only the rank where it happened.
    match (&err, err.root()) {
        (
            nodeshm::Error::Collective { rank: 0, .. },
            nodeshm::Error::NoSpaceInBacking {
                requested,
                available,
                dir: where_,
            },
        ) => {
            assert_eq!(*requested, 64 << 20);
            assert!(*available <= 16 << 20, "{available}");
            assert_eq!(where_, std::path::Path::new(&dir));
        }
        _ => panic!("not a typed NoSpaceInBacking from rank 0: {err:?}"),
    }
    assert!(
        err.to_string().contains("64.0 MiB") && err.to_string().contains("on rank 0"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing is left in {dir}"
    );
    let small = rm
        .make_resource("SHARED::small", Traits::new(4 << 20).dir(&dir))
        .unwrap();
    assert!(small.allocate("fits", 1 << 20).is_ok());
    println!("ok rank {}", world.rank());
}

fn full_backing_directory_fails_everywhere() {
    if !support::is_root() {
        println!("skipped: needs root (mounts a 16 MiB tmpfs)");
        return;
    }
    let tmpfs = support::Mount::tmpfs("16m");
    run(4, Job::role(4, &format!("full:{}", tmpfs.0.display())));
}

/// A rank killed after make_resource: nothing of the job may stay in /dev/shm.
fn role_killed() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rm = ResourceManager::new(&world).unwrap();
    let alloc = rm
        .make_resource("SHARED::killed", Traits::new(4 << 20))
        .unwrap();
    let _block = alloc.allocate("held", 1 << 20).unwrap();
    println!("ok rank {} token {:016x}", world.rank(), rm.job_token());
    world.barrier();
    if world.rank() == 1 {
        nix::sys::signal::raise(nix::sys::signal::SIGKILL).unwrap();
    }
    std::thread::sleep(Duration::from_secs(60));
}

fn killed_rank_leaks_nothing() {
    let (ok, out) = support::run_with_timeout(&mut Job::role(4, "killed").command(), LIMIT);
    assert!(!ok, "the job should fail when a rank is killed:\n{out}");
    let token = out
        .lines()
        .find_map(|l| l.split("token ").nth(1))
        .unwrap_or_else(|| panic!("no token printed:\n{out}"))
        .trim()
        .to_string();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok rank")).count(),
        4,
        "{out}"
    );
    let left = support::leftovers(&token);
    assert!(
        left.is_empty(),
        "left in /dev/shm after the killed job: {left:?}"
    );
}

/// Two jobs at once, same allocator name: separate memory.
fn role_twojobs() {
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rm = ResourceManager::new(&world).unwrap();
    let alloc = rm
        .make_resource("SHARED::same", Traits::new(1 << 20))
        .unwrap();
    let block = alloc.allocate("token", 8).unwrap();
    let dir = PathBuf::from(support::role_arg());
    if world.rank() == 0 {
        block.as_atomic_u64()[0].store(rm.job_token(), Ordering::Release);
        std::fs::write(
            dir.join(format!("{:016x}", rm.job_token())),
            alloc.shm_path().display().to_string(),
        )
        .unwrap();
        // Wait until the other job is up too, so both arenas exist at the same time.
        let start = Instant::now();
        while std::fs::read_dir(&dir).unwrap().count() < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the other job never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    world.barrier();
    assert_eq!(
        block.as_atomic_u64()[0].load(Ordering::Acquire),
        rm.job_token(),
        "another job wrote here"
    );
    world.barrier();
    alloc.deallocate(block).unwrap();
    println!("ok rank {} job {:016x}", world.rank(), rm.job_token());
}

fn two_jobs_never_share() {
    let dir = std::env::temp_dir().join(format!("nodeshm-twojobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let role = format!("twojobs:{}", dir.display());
    let mut a = Job::role(2, &role).command();
    let mut b = Job::role(2, &role).command();
    let first = std::thread::spawn(move || support::run_with_timeout(&mut a, LIMIT));
    let second = support::run_with_timeout(&mut b, LIMIT);
    expect_ok(2, first.join().unwrap());
    expect_ok(2, second);
    let paths: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(paths.len(), 2);
    assert_ne!(paths[0], paths[1], "the two jobs used the same shm name");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Placement scenarios; the argument says which.
fn role_placement() {
    let arg = support::role_arg();
    let (kind, dir) = arg.split_once(':').unwrap_or((arg.as_str(), ""));
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let rank = world.rank();
    let rm = ResourceManager::new(&world).unwrap();
    match kind {
        "auto" => {
            // One NUMA node here: Auto binds to node 0, and the kernel says so.
            let alloc = rm
                .make_resource("SHARED::auto", Traits::new(8 << 20))
                .unwrap();
            let block = alloc.allocate("data", 1 << 20).unwrap();
            for w in block.as_atomic_u64() {
                w.store(1, Ordering::Relaxed);
            }
            let p = alloc.placement();
            assert_eq!(p.numa_asked, NumaPolicy::Auto);
            assert_eq!(p.numa_applied, "bind to NUMA node(s) 0", "{p:?}");
            assert_eq!(p.kernel_policy, "bind:0", "{p:?}");
            assert!(
                p.pages_per_node
                    .iter()
                    .any(|&(n, pages)| n == 0 && pages >= 256),
                "{p:?}"
            );
            assert!(p.pages_per_node.iter().all(|&(n, _)| n == 0), "{p:?}");
            let first_touch = rm
                .make_resource(
                    "SHARED::ft",
                    Traits::new(1 << 20).numa(NumaPolicy::FirstTouch),
                )
                .unwrap();
            assert_eq!(first_touch.placement().kernel_policy, "default");
            world.barrier();
            alloc.deallocate(block).unwrap();
            println!("ok rank {rank} {}", p.numa_applied);
        }
        "fakenuma" => {
            // NUMA node 1 exists only in the XML: Auto falls back with its reason there...
            let alloc = rm
                .make_resource("SHARED::numa", Traits::new(4 << 20).scope(Scope::Numa))
                .unwrap();
            let p = alloc.placement();
            match alloc.scope_instance().index {
                0 => assert_eq!(p.numa_applied, "bind to NUMA node(s) 0", "{p:?}"),
                _ => {
                    assert!(
                        p.numa_applied
                            .starts_with("first touch (auto could not bind to NUMA node(s) 1"),
                        "{p:?}"
                    );
                    assert_eq!(p.kernel_policy, "default");
                }
            }
            // ...and an explicit Bind is the same error on every rank.
            let err = rm
                .make_resource(
                    "SHARED::bind",
                    Traits::new(4 << 20)
                        .scope(Scope::Numa)
                        .numa(NumaPolicy::Bind),
                )
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::Placement, "{err}");
            assert!(
                err.to_string().contains("cannot bind to NUMA node(s) 1"),
                "{err}"
            );
            println!("ok rank {rank} {} / {err}", p.numa_applied);
        }
        "thp" => {
            let traits = Traits::new(16 << 20)
                .dir(dir)
                .huge_pages(HugePages::Transparent);
            let alloc = rm.make_resource("SHARED::thp", traits).unwrap();
            let block = alloc.allocate_aligned("big", 8 << 20, 4096).unwrap();
            for w in block.as_atomic_u64() {
                w.load(Ordering::Relaxed);
            }
            let p = alloc.placement();
            assert!(p.thp_bytes >= 4 << 20, "{p:?}");
            assert_eq!(p.page_size, 2 << 20, "{p:?}");
            world.barrier();
            alloc.deallocate(block).unwrap();
            println!(
                "ok rank {rank} {} bytes in transparent huge pages",
                p.thp_bytes
            );
        }
        "hugetlb" => {
            let traits = Traits::new(8 << 20)
                .dir(dir)
                .huge_pages(HugePages::Required);
            let alloc = rm.make_resource("SHARED::hugetlb", traits).unwrap();
            let block = alloc.allocate("table", 4 << 20).unwrap();
            for w in block.as_atomic_u64() {
                w.load(Ordering::Relaxed);
            }
            let p = alloc.placement();
            assert!(p.hugetlb_bytes >= 4 << 20, "{p:?}");
            assert_eq!(p.page_size, 2 << 20, "{p:?}");
            // Far more than the pages reserved: the clear error, on every rank.
            let err = rm
                .make_resource(
                    "SHARED::toobig",
                    Traits::new(1 << 30)
                        .dir(dir)
                        .huge_pages(HugePages::Required),
                )
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::Placement, "{err}");
            assert!(
                err.to_string().contains("cannot reserve 512 huge pages")
                    && err.to_string().contains("nr_hugepages"),
                "{err}"
            );
            world.barrier();
            alloc.deallocate(block).unwrap();
            println!(
                "ok rank {rank} {} bytes in hugetlb pages / {err}",
                p.hugetlb_bytes
            );
        }
        "no-hugetlbfs" => {
            let err = rm
                .make_resource(
                    "SHARED::req",
                    Traits::new(8 << 20)
                        .dir(dir)
                        .huge_pages(HugePages::Required),
                )
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::Placement, "{err}");
            assert!(
                err.to_string()
                    .contains("needs a hugetlbfs backing directory"),
                "{err}"
            );
            println!("ok rank {rank} {err}");
        }
        "prefault" => {
            let size = 64 << 20;
            let cold = rm.make_resource("SHARED::cold", Traits::new(size)).unwrap();
            assert!(
                cold.placement().resident_bytes < size / 2,
                "{:?}",
                cold.placement()
            );
            assert!(cold.placement().prefault.is_none());
            let warm = rm
                .make_resource("SHARED::warm", Traits::new(size).prefault(true))
                .unwrap();
            let p = warm.placement();
            assert_eq!(p.resident_bytes, size, "{p:?}");
            assert!(p.prefault.is_some());
            println!(
                "ok rank {rank} prefault of {} MiB took {:?}",
                size >> 20,
                p.prefault.unwrap()
            );
        }
        other => panic!("unknown placement scenario {other}"),
    }
}

fn placement_auto_binds_to_node_0() {
    run(4, Job::role(4, "placement:auto"));
}

fn placement_auto_falls_back_and_bind_fails_on_fake_numa_node() {
    run(
        4,
        scoped(
            Job::role(4, "placement:fakenuma"),
            "two-packages-two-numa.xml",
        )
        .bind(Binding::Core),
    );
}

fn placement_transparent_huge_pages_on_huge_tmpfs() {
    if !support::is_root() {
        println!("skipped: needs root (mounts a tmpfs with huge=always)");
        return;
    }
    let tmpfs = support::Mount::new("tmpfs", "size=64m,huge=always");
    run(
        2,
        Job::role(2, &format!("placement:thp:{}", tmpfs.0.display())),
    );
}

fn placement_required_huge_pages_on_hugetlbfs() {
    if !support::is_root() {
        println!("skipped: needs root (reserves huge pages and mounts hugetlbfs)");
        return;
    }
    let reserved = support::HugePagesReserved::reserve(8);
    let mount = support::Mount::new("hugetlbfs", "mode=1777");
    // MPICH's UCX shared-memory transport takes free huge pages for itself when it starts
    // (UCX_SYSV_HUGETLB_MODE=try by default), which would leave too few for the arena.
    run(
        2,
        Job::role(2, &format!("placement:hugetlb:{}", mount.0.display()))
            .env("UCX_SYSV_HUGETLB_MODE", "n"),
    );
    drop((mount, reserved));
    let plain = support::TempDir::new("not-hugetlbfs");
    run(
        2,
        Job::role(2, &format!("placement:no-hugetlbfs:{}", plain.0.display())),
    );
}

fn prefault_maps_every_page_on_every_rank() {
    run(4, Job::role(4, "placement:prefault"));
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
