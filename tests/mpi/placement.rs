//! Memory placement: NUMA binding and its fallback, transparent and required huge pages,
//! prefault.

use std::sync::atomic::Ordering;

use mpi::traits::*;
use nodeshm::{ErrorCode, HugePages, NumaPolicy, ResourceManager, Scope, Traits};

use crate::support::{
    self,
    launch::{Binding, Job},
};
use crate::{run, scoped};

/// Placement scenarios; the argument says which.
pub fn role_placement() {
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

pub fn placement_auto_binds_to_node_0() {
    run(4, Job::role(4, "placement:auto"));
}

pub fn placement_auto_falls_back_and_bind_fails_on_fake_numa_node() {
    run(
        4,
        scoped(
            Job::role(4, "placement:fakenuma"),
            "two-packages-two-numa.xml",
        )
        .bind(Binding::Core),
    );
}

pub fn placement_transparent_huge_pages_on_huge_tmpfs() {
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

pub fn placement_required_huge_pages_on_hugetlbfs() {
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

pub fn prefault_maps_every_page_on_every_rank() {
    run(4, Job::role(4, "placement:prefault"));
}
