//! Case 1: time until every rank can use new shared memory, and until every byte was touched
//! once, for nodeshm's ways of reserving pages against `MPI_Win_allocate_shared`, with the
//! minor page faults each took and the collective calls of one `make_resource`. Variants are
//! interleaved within each repetition, so that a slow moment of the machine hits them all.

use std::time::Instant;

use mpi::traits::*;
use nodeshm::{HugePages, Reservation, Traits};

use crate::cases::{max, median, size_label, sum, Ctx, MIB};
use crate::mpiwin::SharedWindow;

/// Minor page faults of this process so far.
fn minor_faults() -> f64 {
    let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the valid, writable buffer.
    let rc = unsafe { nix::libc::getrusage(nix::libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: zero-initialised above and filled by getrusage on success; all-zero is a valid
    // rusage either way.
    let usage = unsafe { usage.assume_init() };
    if rc == 0 {
        usage.ru_minflt as f64
    } else {
        0.0
    }
}

/// Each rank writes its share of `len` bytes at `base`.
///
/// # Safety
/// `base..base+len` is a live shared mapping that nobody else uses during the call except the
/// other ranks, each on its own share.
unsafe fn touch_share(base: *mut u8, len: usize, rank: usize, ranks: usize) {
    let (from, to) = (len * rank / ranks, len * (rank + 1) / ranks);
    // SAFETY: per the contract, [from, to) is this rank's own part of the mapping.
    unsafe { std::ptr::write_bytes(base.add(from), 1, to - from) };
}

#[derive(Clone)]
struct Variant {
    label: &'static str,
    /// Run its repetitions back to back instead of interleaved: this VM reports freed 2 MiB
    /// blocks to its host (virtio-balloon free page reporting), so a THP allocation made after
    /// the 4 KiB variants freed theirs pays host faults a bare-metal node never sees.
    back_to_back: bool,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// `make_resource` with these traits.
    Nodeshm(fn(u64, &Ctx) -> Traits),
    Window,
    /// Only the page reservation of a small arena (each rank `posix_fallocate`s its share of
    /// one file), timed alone: the part of nodeshm's "ready" that makes a full `/dev/shm` an
    /// error at creation instead of a SIGBUS later, which the window does not pay until its
    /// pages are touched.
    ReserveOnly,
}

/// The label of the reservation-alone row, which the targets quote.
pub const RESERVE_ONLY: &str = "reserving the pages alone (fallocate)";

fn variants(ctx: &Ctx, largest: bool) -> Vec<Variant> {
    let mut v = vec![
        Variant {
            label: "nodeshm",
            kind: Kind::Nodeshm(|size, _| Traits::new(size)),
            back_to_back: false,
        },
        Variant {
            label: "MPI_Win_allocate_shared",
            kind: Kind::Window,
            back_to_back: false,
        },
    ];
    v.push(Variant {
        label: "nodeshm fallocate",
        kind: Kind::Nodeshm(|size, _| Traits::new(size).reservation(Reservation::Fallocate)),
        back_to_back: false,
    });
    if !largest {
        v.push(Variant {
            label: RESERVE_ONLY,
            kind: Kind::ReserveOnly,
            back_to_back: false,
        });
        return v;
    }
    v.push(Variant {
        label: "nodeshm fallocate+populate",
        kind: Kind::Nodeshm(|size, _| {
            Traits::new(size).reservation(Reservation::FallocateThenPopulate)
        }),
        back_to_back: false,
    });
    v.push(Variant {
        label: "nodeshm + prefault",
        kind: Kind::Nodeshm(|size, _| Traits::new(size).prefault(true)),
        back_to_back: false,
    });
    if ctx.huge_dir.is_some() {
        v.push(Variant {
            label: "nodeshm THP, reps back to back",
            kind: Kind::Nodeshm(|size, ctx| {
                Traits::new(size)
                    .dir(ctx.huge_dir.as_deref().unwrap_or("/dev/shm"))
                    .huge_pages(HugePages::Transparent)
            }),
            back_to_back: true,
        });
    }
    if ctx.hugetlb_dir.is_some() {
        v.push(Variant {
            label: "nodeshm hugetlbfs, reps back to back",
            kind: Kind::Nodeshm(|size, ctx| {
                Traits::new(size)
                    .dir(ctx.hugetlb_dir.as_deref().unwrap_or("/dev/hugepages"))
                    .huge_pages(HugePages::Required)
            }),
            back_to_back: true,
        });
    }
    v
}

/// One repetition of one variant.
#[derive(Clone, Copy)]
struct Run {
    ready: f64,
    touched: f64,
    /// Minor faults of the node's ranks until ready, and while touching.
    faults_ready: f64,
    faults_touch: f64,
    /// Collective calls of one make_resource (NaN for windows).
    calls: f64,
}

fn once(ctx: &Ctx, variant: &Variant, size: u64, rep: usize) -> Run {
    let node = ctx.rm.node_communicator();
    let (rank, ranks) = (node.rank() as usize, node.size() as usize);
    ctx.world.barrier();
    let faults = minor_faults();
    let t0 = Instant::now();
    let make = match variant.kind {
        Kind::Nodeshm(make) => make,
        Kind::ReserveOnly => return reserve_only(ctx, size, rep),
        Kind::Window => {
            let win = SharedWindow::allocate(node, size as usize);
            let ready = t0.elapsed().as_secs_f64();
            let at_ready = minor_faults();
            // SAFETY: each rank writes only its share of the window.
            unsafe { touch_share(win.base, win.size, rank, ranks) };
            ctx.world.barrier();
            let run = finish(ctx, t0, ready, faults, at_ready, f64::NAN);
            drop(win);
            return run;
        }
    };
    let name = format!("SHARED::create-{size}-{rep}-{}", variant.label.len());
    let calls = nodeshm::comm::collective_calls();
    let alloc = ctx
        .rm
        .make_resource(&name, make(size, ctx))
        .expect("make_resource");
    let calls = (nodeshm::comm::collective_calls() - calls) as f64;
    let ready = t0.elapsed().as_secs_f64();
    let at_ready = minor_faults();
    let usable = size - (size / 64).max(256 << 10);
    let block = alloc
        .allocate_aligned("all", usable, 4096)
        .expect("allocate");
    // SAFETY: each rank writes only its share of the block.
    unsafe { touch_share(block.as_ptr(), usable as usize, rank, ranks) };
    ctx.world.barrier();
    let run = finish(ctx, t0, ready, faults, at_ready, calls);
    alloc.deallocate(block).expect("deallocate");
    ctx.rm.remove_allocator(&name);
    drop(alloc);
    run
}

/// One repetition of [`Kind::ReserveOnly`]: node rank 0 makes a file of `size` bytes in
/// `/dev/shm` and every rank opens it; the file is unlinked before anything is timed, so that
/// nothing is left behind. Then each rank reserves its page-aligned share, as
/// `make_resource` does, and the slowest rank's time is the row's "ready".
fn reserve_only(ctx: &Ctx, size: u64, rep: usize) -> Run {
    use std::os::fd::AsFd;
    let node = ctx.rm.node_communicator();
    let (rank, ranks) = (node.rank() as u64, node.size() as u64);
    let mut pid = std::process::id();
    node.process_at_rank(0).broadcast_into(&mut pid);
    let path = format!("/dev/shm/nodeshm-bench-reserve-{pid}-{size}-{rep}");
    if rank == 0 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("scratch file");
        file.set_len(size).expect("scratch size");
    }
    node.barrier();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open scratch file");
    node.barrier();
    if rank == 0 {
        std::fs::remove_file(&path).expect("unlink scratch file");
    }
    ctx.world.barrier();
    // The shares of make_resource: whole pages of the system's size (tmpfs).
    let page = nodeshm::arena::page_size();
    let pages = size / page;
    let (first, last) = (pages * rank / ranks, pages * (rank + 1) / ranks);
    let t0 = Instant::now();
    nix::fcntl::posix_fallocate(
        file.as_fd(),
        (first * page) as i64,
        ((last - first) * page) as i64,
    )
    .expect("posix_fallocate");
    let ready = t0.elapsed().as_secs_f64();
    Run {
        ready: max(ctx.world, ready),
        touched: f64::NAN,
        faults_ready: f64::NAN,
        faults_touch: f64::NAN,
        calls: f64::NAN,
    }
}

/// Reduces one repetition's local figures (after the timed part, so that these reductions
/// are not timed): the slowest rank's times, the node's faults.
fn finish(ctx: &Ctx, t0: Instant, ready: f64, start: f64, at_ready: f64, calls: f64) -> Run {
    let touched = t0.elapsed().as_secs_f64();
    let now = minor_faults();
    let node = ctx.rm.node_communicator();
    Run {
        ready: max(ctx.world, ready),
        touched: max(ctx.world, touched),
        faults_ready: sum(node, at_ready - start),
        faults_touch: sum(node, now - at_ready),
        calls,
    }
}

pub fn creation(ctx: &mut Ctx) {
    let sizes: &[(u64, usize)] = if ctx.quick {
        &[(MIB, 5), (64 * MIB, 2), (256 * MIB, 2)]
    } else {
        &[(MIB, 21), (64 * MIB, 7), (1024 * MIB, 5)]
    };
    let largest = sizes.last().map_or(0, |s| s.0);
    for &(size, reps) in sizes {
        let variants = variants(ctx, size == largest);
        let mut runs = vec![Vec::new(); variants.len()];
        for rep in 0..reps {
            for (i, v) in variants.iter().enumerate().filter(|(_, v)| !v.back_to_back) {
                runs[i].push(once(ctx, v, size, rep));
                ctx.world.barrier();
            }
        }
        for (i, v) in variants.iter().enumerate().filter(|(_, v)| v.back_to_back) {
            for rep in 0..reps {
                runs[i].push(once(ctx, v, size, rep));
                ctx.world.barrier();
            }
        }
        let label = size_label(size);
        for (v, runs) in variants.iter().zip(runs) {
            let pick = |f: fn(&Run) -> f64| {
                let mut x: Vec<f64> = runs.iter().map(f).collect();
                median(&mut x)
            };
            let r = &mut ctx.report;
            r.add(
                "creation",
                v.label,
                &label,
                "ready",
                pick(|r| r.ready) * 1e3,
                "ms",
            );
            if matches!(v.kind, Kind::ReserveOnly) {
                continue;
            }
            let touched = pick(|r| r.touched) * 1e3;
            r.add("creation", v.label, &label, "ready+touched", touched, "ms");
            r.add(
                "creation",
                v.label,
                &label,
                "faults ready",
                pick(|r| r.faults_ready),
                "",
            );
            r.add(
                "creation",
                v.label,
                &label,
                "faults touch",
                pick(|r| r.faults_touch),
                "",
            );
            if matches!(v.kind, Kind::Nodeshm(_)) {
                r.add(
                    "creation",
                    v.label,
                    &label,
                    "collectives",
                    pick(|r| r.calls),
                    "",
                );
            }
        }
    }
}
