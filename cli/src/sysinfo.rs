//! `nodeshm topo` and `nodeshm check`: the hwloc view scopes are made from, and the environment
//! problems users of shared memory hit, each with its fix.

use std::path::Path;

use serde::Serialize;

use crate::scan;

/// One finding of `check`.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    /// `ok`, `warn` or `problem`.
    pub status: &'static str,
    pub detail: String,
    pub fix: Option<String>,
}

fn finding(
    check: &'static str,
    status: &'static str,
    detail: String,
    fix: Option<&str>,
) -> Finding {
    Finding {
        check,
        status,
        detail,
        fix: fix.map(str::to_string),
    }
}

fn gib(bytes: u64) -> String {
    nodeshm::sys::human_bytes(bytes)
}

fn backing_space(dir: &Path) -> Finding {
    let Some((total, free)) = nodeshm::sys::backing_space(dir) else {
        return finding(
            "backing directory",
            "problem",
            format!("{} does not exist or cannot be read", dir.display()),
            Some("create it, or point NODESHM_SHM_DIR at a tmpfs"),
        );
    };
    let detail = format!("{}: {} free of {}", dir.display(), gib(free), gib(total));
    let fix = "enlarge it (docker run --shm-size=8g, or mount -o remount,size=8G /dev/shm) or point NODESHM_SHM_DIR at a larger tmpfs";
    if free < 256 << 20 {
        let hint = if total <= 64 << 20 {
            " (looks like a container's 64 MiB default)"
        } else {
            ""
        };
        finding(
            "backing directory",
            "problem",
            format!("{detail}{hint}: too small for shared tables"),
            Some(fix),
        )
    } else if free < 1 << 30 {
        finding(
            "backing directory",
            "warn",
            format!("{detail}: less than 1 GiB free"),
            Some(fix),
        )
    } else {
        finding("backing directory", "ok", detail, None)
    }
}

fn transparent_huge_pages() -> Finding {
    let path = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let current = text
                .split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
                .unwrap_or_else(|| text.trim().to_string());
            if current == "never" || current == "deny" {
                finding(
                    "transparent huge pages for shmem",
                    "warn",
                    format!("{path} is '{current}': HugePages::Transparent arenas get 4 KiB pages"),
                    Some("echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled (root), or mount the backing tmpfs with huge=always"),
                )
            } else {
                finding(
                    "transparent huge pages for shmem",
                    "ok",
                    format!("{path} is '{current}'"),
                    None,
                )
            }
        }
        Err(e) => finding(
            "transparent huge pages for shmem",
            "warn",
            format!("cannot read {path}: {e}"),
            None,
        ),
    }
}

fn huge_pages() -> Finding {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| {
                v.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let (total, free, size_kb) = (
        field("HugePages_Total:"),
        field("HugePages_Free:"),
        field("Hugepagesize:"),
    );
    let detail = format!("{free} of {total} huge pages of {size_kb} kB free");
    if free == 0 {
        finding(
            "huge pages (hugetlbfs)",
            "warn",
            format!("{detail}: HugePages::Required arenas cannot be created"),
            Some("reserve some: echo 512 > /proc/sys/vm/nr_hugepages (root), and mount hugetlbfs"),
        )
    } else {
        finding("huge pages (hugetlbfs)", "ok", detail, None)
    }
}

fn remove_ipc() -> Finding {
    let uid = nix::unistd::getuid().as_raw();
    let mut setting: Option<String> = None;
    let mut files = vec![std::path::PathBuf::from("/etc/systemd/logind.conf")];
    if let Ok(d) = std::fs::read_dir("/etc/systemd/logind.conf.d") {
        let mut more: Vec<_> = d.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in &files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Some(v) = line.trim().strip_prefix("RemoveIPC=") {
                setting = Some(v.trim().to_string());
            }
        }
    }
    let logind = Path::new("/lib/systemd/systemd-logind").exists()
        || Path::new("/usr/lib/systemd/systemd-logind").exists();
    let effective = setting.clone().unwrap_or_else(|| {
        if logind {
            "yes (systemd default)".into()
        } else {
            "no (no systemd-logind)".into()
        }
    });
    let on = effective.starts_with("yes");
    if on && uid >= 1000 {
        finding(
            "systemd RemoveIPC",
            "problem",
            format!("RemoveIPC={effective}: systemd deletes uid {uid}'s /dev/shm segments when its last session ends, under running jobs"),
            Some("set RemoveIPC=no in /etc/systemd/logind.conf and restart systemd-logind"),
        )
    } else {
        let why = if on {
            format!(" (uid {uid} is a system user, not affected)")
        } else {
            String::new()
        };
        finding(
            "systemd RemoveIPC",
            "ok",
            format!("RemoveIPC={effective}{why}"),
            None,
        )
    }
}

fn arenas(dir: &Path) -> Finding {
    let dir = match scan::Dir::open(dir) {
        Ok(dir) => dir,
        Err(e) => {
            return finding(
                "stale arenas",
                "problem",
                e,
                Some("create the directory, or point --dir / NODESHM_SHM_DIR at a tmpfs"),
            )
        }
    };
    let rows = scan::scan(&dir, 0);
    let orphaned: Vec<_> = rows
        .iter()
        .filter(|r| r.state == "orphaned")
        .map(|r| r.shm_name.clone())
        .collect();
    let foreign: Vec<_> = rows
        .iter()
        .filter(|r| r.state == "foreign")
        .map(|r| r.shm_name.clone())
        .collect();
    if !orphaned.is_empty() {
        finding(
            "stale arenas",
            "warn",
            format!(
                "{} orphaned arena(s) hold memory: {}",
                orphaned.len(),
                orphaned.join(", ")
            ),
            Some("nodeshm gc (nodeshm gc --dry-run shows what it removes)"),
        )
    } else if !foreign.is_empty() {
        finding(
            "stale arenas",
            "warn",
            format!(
                "file(s) named like arenas that are not: {}",
                foreign.join(", ")
            ),
            Some("inspect and remove them by hand if they are leftovers"),
        )
    } else {
        finding(
            "stale arenas",
            "ok",
            format!("{} arena(s), none orphaned", rows.len()),
            None,
        )
    }
}

/// Every check, in order.
pub fn check(dir: &Path) -> Vec<Finding> {
    vec![
        backing_space(dir),
        transparent_huge_pages(),
        huge_pages(),
        remove_ipc(),
        arenas(dir),
    ]
}

/// The topology as `topo` shows it.
#[derive(Debug, Serialize)]
pub struct Topo {
    pub source: String,
    pub packages: usize,
    pub numa_nodes: usize,
    pub cores: usize,
    pub pus: Vec<Pu>,
    pub binding: String,
    pub node_instance: String,
    pub socket_instance: String,
    pub numa_instance: String,
}

/// One processing unit and the scope instances it belongs to.
#[derive(Debug, Serialize)]
pub struct Pu {
    pub os_index: usize,
    pub core: Option<usize>,
    pub socket: Option<usize>,
    pub numa: Option<usize>,
}

#[cfg(feature = "hwloc")]
pub fn topo() -> Result<Topo, nodeshm::Error> {
    use hwlocality::object::types::ObjectType;
    use nodeshm::topology::{Scope, Topology};

    let topology = Topology::load()?;
    let hw = topology.hwloc();
    let containing = |ty: ObjectType, os: usize| {
        hw.objects_with_type(ty)
            .find(|o| o.cpuset().is_some_and(|c| c.is_set(os)))
            .map(|o| o.logical_index())
    };
    let pus = hw
        .objects_with_type(ObjectType::PU)
        .filter_map(|pu| pu.os_index())
        .map(|os| Pu {
            os_index: os,
            core: containing(ObjectType::Core, os),
            socket: containing(ObjectType::Package, os),
            numa: containing(ObjectType::NUMANode, os),
        })
        .collect();
    let instance = |scope| match topology.this_instance(scope) {
        Ok(i) => i.to_string(),
        Err(e) => format!("none ({e})"),
    };
    Ok(Topo {
        source: std::env::var("HWLOC_XMLFILE")
            .map_or_else(|_| "this machine".into(), |f| format!("HWLOC_XMLFILE={f}")),
        packages: hw.objects_with_type(ObjectType::Package).count(),
        numa_nodes: hw.objects_with_type(ObjectType::NUMANode).count(),
        cores: hw.objects_with_type(ObjectType::Core).count(),
        pus,
        binding: topology
            .binding()
            .map_or_else(|e| e.to_string(), |c| nodeshm::topology::cpu_list(&c)),
        node_instance: instance(Scope::Node),
        socket_instance: instance(Scope::Socket),
        numa_instance: instance(Scope::Numa),
    })
}

#[cfg(not(feature = "hwloc"))]
pub fn topo() -> Result<Topo, nodeshm::Error> {
    Err(nodeshm::Error::Unsupported(
        "this nodeshm was built without the hwloc feature".into(),
    ))
}
