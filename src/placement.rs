//! Where an arena's memory lives: the NUMA policy and page size asked for, what was applied,
//! and what the kernel reports for this process's mapping (read back from
//! `/proc/self/numa_maps` and `/proc/self/smaps`, not from what we asked).

use std::time::Duration;

use crate::arena::HugePages;
use crate::error::{Error, Result};
use crate::topology::{Scope, ScopeInstance, Topology};

/// NUMA policy for an allocator's arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NumaPolicy {
    /// Socket and NUMA scope: bind to the scope instance's NUMA nodes. Node scope: interleave
    /// over the node's NUMA nodes (bind to the only one if there is one). Falls back to first
    /// touch, with the reason recorded, when the kernel refuses.
    #[default]
    Auto,
    /// No policy: pages go where they are first allocated, i.e. near the rank that creates the
    /// arena (it reserves every page at creation, so no page is ever missing later).
    FirstTouch,
    /// Bind to the scope instance's NUMA nodes (all of the machine's for node scope); an error
    /// on every rank if that cannot be done.
    Bind,
    /// Interleave over the scope instance's NUMA nodes; an error if that cannot be done.
    Interleave,
}

/// What will be asked of the kernel for one scope instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) asked: NumaPolicy,
    /// `None`: first touch.
    pub(crate) interleave: Option<bool>,
    pub(crate) nodes: Vec<usize>,
}

fn node_list(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(feature = "hwloc")]
pub(crate) fn plan(topology: &Topology, instance: &ScopeInstance, asked: NumaPolicy) -> Plan {
    let nodes = topology.numa_nodes_of(instance);
    let interleave = match asked {
        NumaPolicy::FirstTouch => None,
        NumaPolicy::Bind => Some(false),
        NumaPolicy::Interleave => Some(true),
        NumaPolicy::Auto => Some(instance.scope == Scope::Node && nodes.len() > 1),
    };
    Plan {
        asked,
        interleave,
        nodes,
    }
}

#[cfg(not(feature = "hwloc"))]
pub(crate) fn plan(_: &Topology, _: &ScopeInstance, asked: NumaPolicy) -> Plan {
    Plan {
        asked,
        interleave: None,
        nodes: Vec::new(),
    }
}

/// Applies `plan` to the fresh mapping `area` (before its pages exist). Returns a description
/// of what was applied; an explicit policy that the kernel refuses is an error, `Auto` falls
/// back to first touch and says why.
pub(crate) fn apply(topology: &Topology, area: &[u8], plan: &Plan) -> Result<String> {
    let Some(interleave) = plan.interleave else {
        return Ok("first touch (no NUMA policy)".into());
    };
    let what = format!(
        "{} NUMA node(s) {}",
        if interleave {
            "interleave over"
        } else {
            "bind to"
        },
        node_list(&plan.nodes)
    );
    match bind(topology, area, &plan.nodes, interleave) {
        Ok(()) => Ok(what),
        Err(reason) if plan.asked == NumaPolicy::Auto => {
            Ok(format!("first touch (auto could not {what}: {reason})"))
        }
        Err(reason) => Err(Error::Placement(format!(
            "cannot {what} as NumaPolicy::{:?} asks: {reason}; use NumaPolicy::Auto to fall back \
             to first touch, or bind ranks so each scope instance has memory (numactl -H)",
            plan.asked
        ))),
    }
}

#[cfg(feature = "hwloc")]
fn bind(topology: &Topology, area: &[u8], nodes: &[usize], interleave: bool) -> Result<(), String> {
    use hwlocality::memory::binding::{MemoryBindingFlags, MemoryBindingPolicy};
    use hwlocality::memory::nodeset::NodeSet;
    if nodes.is_empty() {
        return Err("the topology lists no NUMA node for this scope instance".into());
    }
    let mut set = NodeSet::new();
    for &n in nodes {
        set.set(n);
    }
    let policy = if interleave {
        MemoryBindingPolicy::Interleave
    } else {
        MemoryBindingPolicy::Bind
    };
    topology
        .hwloc()
        .bind_memory_area(area, &set, policy, MemoryBindingFlags::STRICT)
        .map_err(|e| {
            let why = match e {
                hwlocality::errors::HybridError::Hwloc(raw) => match raw.errno {
                    Some(errno) => std::io::Error::from_raw_os_error(errno.0).to_string(),
                    None => raw.to_string(),
                },
                other => other.to_string(),
            };
            let online =
                std::fs::read_to_string("/sys/devices/system/node/online").unwrap_or_default();
            format!(
                "the kernel refused it ({why}); its NUMA nodes are {}",
                if online.trim().is_empty() {
                    "unknown"
                } else {
                    online.trim()
                }
            )
        })
}

#[cfg(not(feature = "hwloc"))]
fn bind(_: &Topology, _: &[u8], _: &[usize], _: bool) -> Result<(), String> {
    Err("this nodeshm was built without hwloc".into())
}

/// Memory placement of an allocator's arena in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The NUMA policy asked for.
    pub numa_asked: NumaPolicy,
    /// What the creating rank applied (with the reason when `Auto` fell back).
    pub numa_applied: String,
    /// The policy the kernel reports for this mapping (`bind:0`, `interleave:0-1`, `default`).
    pub kernel_policy: String,
    /// Resident pages of the arena per NUMA node, as the kernel counts them: (node, pages).
    pub pages_per_node: Vec<(usize, u64)>,
    /// The page size policy asked for.
    pub huge_asked: HugePages,
    /// The page size the kernel reports for the mapping (2 MiB when shmem is PMD-mapped).
    pub page_size: u64,
    /// Bytes of the arena mapped with transparent huge pages (smaps ShmemPmdMapped).
    pub thp_bytes: u64,
    /// Bytes of the arena in hugetlbfs pages (smaps Shared_Hugetlb + Private_Hugetlb).
    pub hugetlb_bytes: u64,
    /// Bytes of the arena mapped in this process (smaps Rss).
    pub resident_bytes: u64,
    /// How long prefaulting took (slowest rank of the scope instance), if it was asked for.
    pub prefault: Option<Duration>,
}

/// The kernel's view of the mapping that starts at `addr`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct KernelView {
    pub(crate) policy: String,
    pub(crate) pages_per_node: Vec<(usize, u64)>,
    pub(crate) page_size: u64,
    pub(crate) thp_bytes: u64,
    pub(crate) hugetlb_bytes: u64,
    pub(crate) resident_bytes: u64,
}

/// Reads numa_maps and smaps for the mapping starting at `addr`.
pub(crate) fn kernel_view(addr: usize) -> KernelView {
    let mut view = KernelView {
        policy: "unknown".into(),
        page_size: crate::arena::page_size(),
        ..KernelView::default()
    };
    let start = format!("{addr:x}");
    if let Ok(numa_maps) = std::fs::read_to_string("/proc/self/numa_maps") {
        if let Some(line) = numa_maps
            .lines()
            .find(|l| l.split(' ').next() == Some(start.as_str()))
        {
            let mut fields = line.split_whitespace().skip(1);
            view.policy = fields.next().unwrap_or("unknown").to_string();
            for f in fields {
                if let Some((key, value)) = f.split_once('=') {
                    if let (Some(node), Ok(pages)) = (key.strip_prefix('N'), value.parse::<u64>()) {
                        if let Ok(node) = node.parse() {
                            view.pages_per_node.push((node, pages));
                        }
                    } else if key == "kernelpagesize_kB" {
                        view.page_size = value.parse::<u64>().unwrap_or(4) << 10;
                    }
                }
            }
        }
    }
    if let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") {
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                inside = first.split('-').next() == Some(start.as_str());
                continue;
            }
            if !inside {
                continue;
            }
            let kb = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    << 10
            };
            match first {
                "Rss:" => view.resident_bytes = kb(line),
                "ShmemPmdMapped:" | "FilePmdMapped:" => view.thp_bytes += kb(line),
                "Shared_Hugetlb:" | "Private_Hugetlb:" => view.hugetlb_bytes += kb(line),
                _ => {}
            }
        }
    }
    if view.thp_bytes > 0 && view.page_size < 2 << 20 {
        view.page_size = 2 << 20;
    }
    view
}

/// The first hugetlbfs mount point listed in /proc/mounts.
pub(crate) fn hugetlbfs_mount() -> Option<std::path::PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "hugetlbfs")
        .map(|f| std::path::PathBuf::from(f[1]))
}
