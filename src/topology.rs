//! Where the calling process runs, from hwloc: which package (socket) and NUMA node its CPU
//! binding lies in, and so which scope instance it belongs to. Honours `HWLOC_XMLFILE` (with
//! `HWLOC_THISSYSTEM=1`) like every hwloc program, so tests can present this machine as
//! several sockets.

use std::fmt;

use crate::error::{Error, Result};

/// Which ranks share one arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// All ranks of a node (what `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)` groups).
    #[default]
    Node,
    /// The ranks bound inside one package (hwloc `Package`).
    Socket,
    /// The ranks bound inside one NUMA node.
    Numa,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Node => "node",
            Scope::Socket => "socket",
            Scope::Numa => "numa",
        })
    }
}

/// One instance of a scope: "socket 1" means the second package (hwloc logical index 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScopeInstance {
    /// Which kind of scope.
    pub scope: Scope,
    /// hwloc logical index of the package or NUMA node (0 for a node).
    pub index: usize,
    /// The operating system's index (`P#`), where hwloc knows it.
    pub os_index: Option<usize>,
}

impl fmt::Display for ScopeInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.scope, self.index)
    }
}

/// The label an allocator's arena carries in its header (shown by `nodeshm ls` and `stat`): the
/// allocator's name, then its scope instance ("SHARED::tables socket 1").
pub fn allocator_label(name: &str, instance: &ScopeInstance) -> String {
    format!("{name} {instance}")
}

/// Splits a label made by [`allocator_label`] into the allocator name and the scope instance
/// ("socket 1"). Names may contain spaces: the instance is the label's last two words. A label
/// of another form is all name.
pub fn split_allocator_label(label: &str) -> (&str, &str) {
    let mut words = label.rsplitn(3, ' ');
    let (index, scope, name) = (words.next(), words.next(), words.next());
    match (name, scope, index) {
        (Some(name), Some(scope), Some(index))
            if ["node", "socket", "numa"].contains(&scope)
                && !index.is_empty()
                && index.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (name, &label[name.len() + 1..])
        }
        _ => (label, ""),
    }
}

#[cfg(feature = "hwloc")]
mod imp {
    use hwlocality::cpu::binding::CpuBindingFlags;
    use hwlocality::cpu::cpuset::CpuSet;
    use hwlocality::object::types::ObjectType;
    use hwlocality::object::TopologyObject;

    use super::*;

    /// A CPU set as a list ("0-3,8").
    pub fn cpu_list(cpus: &CpuSet) -> String {
        let text = cpus.to_string();
        text.strip_prefix("CpuSet(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or(&text)
            .to_string()
    }

    /// The machine's topology as hwloc sees it.
    pub struct Topology {
        inner: hwlocality::Topology,
    }

    impl fmt::Debug for Topology {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Topology").finish_non_exhaustive()
        }
    }

    fn object_type(scope: Scope) -> Option<ObjectType> {
        match scope {
            Scope::Node => None,
            Scope::Socket => Some(ObjectType::Package),
            Scope::Numa => Some(ObjectType::NUMANode),
        }
    }

    impl Topology {
        /// Loads the topology of this machine (or of `$HWLOC_XMLFILE`).
        pub fn load() -> Result<Self> {
            let inner = hwlocality::Topology::new().map_err(|e| {
                Error::Binding(format!(
                    "hwloc could not load the topology: {e}; check HWLOC_XMLFILE if it is set"
                ))
            })?;
            Ok(Topology { inner })
        }

        /// The hwloc topology, for callers that need more (memory binding, the CLI).
        pub fn hwloc(&self) -> &hwlocality::Topology {
            &self.inner
        }

        /// The CPUs this process is bound to (all of them when unbound).
        pub fn binding(&self) -> Result<CpuSet> {
            self.inner
                .cpu_binding(CpuBindingFlags::PROCESS)
                .or_else(|_| self.inner.cpu_binding(CpuBindingFlags::THREAD))
                .map_err(|e| Error::Binding(format!("cannot read this process's CPU binding: {e}")))
        }

        /// Objects of the scope's type, in logical order.
        pub fn instances(&self, scope: Scope) -> Vec<&TopologyObject> {
            match object_type(scope) {
                Some(t) => self.inner.objects_with_type(t).collect(),
                None => Vec::new(),
            }
        }

        /// The scope instance a process bound to `cpus` belongs to. Fails if `cpus` touches more
        /// than one instance (or none), saying which.
        pub fn instance_of(&self, scope: Scope, cpus: &CpuSet) -> Result<ScopeInstance> {
            if scope == Scope::Node {
                return Ok(ScopeInstance {
                    scope,
                    index: 0,
                    os_index: None,
                });
            }
            let touched: Vec<&TopologyObject> = self
                .instances(scope)
                .into_iter()
                .filter(|o| o.cpuset().is_some_and(|c| c.intersects(cpus)))
                .collect();
            match touched.as_slice() {
                [one] => Ok(ScopeInstance {
                    scope,
                    index: one.logical_index(),
                    os_index: one.os_index(),
                }),
                [] => Err(Error::Binding(format!(
                    "bound to CPUs {}, which belong to no {scope} in the topology",
                    cpu_list(cpus)
                ))),
                many => Err(Error::Binding(format!(
                    "bound to CPUs {}, which span {} {scope}s ({}): a {scope}-scoped \
                     allocator needs every rank inside one {scope}; {}",
                    cpu_list(cpus),
                    many.len(),
                    many.iter()
                        .map(|o| format!("#{}", o.logical_index()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    binding_advice()
                ))),
            }
        }

        /// The scope instance of the calling process.
        pub fn this_instance(&self, scope: Scope) -> Result<ScopeInstance> {
            if scope == Scope::Node {
                return self.instance_of(scope, &CpuSet::new());
            }
            self.instance_of(scope, &self.binding()?)
        }

        /// OS indices of the NUMA nodes of a scope instance (all of the machine's for Node).
        pub fn numa_nodes_of(&self, instance: &ScopeInstance) -> Vec<usize> {
            let nodeset = match instance.scope {
                Scope::Node => Some(self.inner.nodeset().clone_target()),
                _ => self
                    .instances(instance.scope)
                    .get(instance.index)
                    .and_then(|o| o.nodeset().map(|n| n.clone_target())),
            };
            nodeset
                .map(|n| n.iter_set().map(usize::from).collect())
                .unwrap_or_default()
        }
    }
}

#[cfg(feature = "hwloc")]
pub use imp::{cpu_list, Topology};

/// Without hwloc only node scope exists.
#[cfg(not(feature = "hwloc"))]
#[derive(Debug)]
pub struct Topology;

#[cfg(not(feature = "hwloc"))]
impl Topology {
    /// Without hwloc there is nothing to load.
    pub fn load() -> Result<Self> {
        Ok(Topology)
    }

    /// Node scope only: socket and NUMA scope need hwloc.
    pub fn this_instance(&self, scope: Scope) -> Result<ScopeInstance> {
        match scope {
            Scope::Node => Ok(ScopeInstance {
                scope,
                index: 0,
                os_index: None,
            }),
            _ => Err(Error::Unsupported(format!(
                "{scope} scope needs hwloc: build nodeshm with the `hwloc` feature"
            ))),
        }
    }
}

/// How to bind ranks to cores, in the spelling of every launcher we know, the one that started
/// this process first (recognised by the variables each sets in its ranks' environment).
#[cfg(feature = "hwloc")]
pub(crate) fn binding_advice() -> String {
    let has = |v: &str| std::env::var_os(v).is_some();
    let launcher = if has("SLURM_STEP_ID") && has("SLURM_PROCID") {
        Some("srun --cpu-bind=cores")
    } else if has("OMPI_COMM_WORLD_SIZE") {
        Some("mpirun --bind-to core")
    } else if has("PMI_RANK") || has("MPI_LOCALRANKID") {
        Some("mpiexec -bind-to core")
    } else {
        None
    };
    let all = "Open MPI `mpirun --bind-to core`, MPICH `mpiexec -bind-to core`, \
               Slurm `srun --cpu-bind=cores`";
    match launcher {
        Some(l) => format!("bind each rank to a core: this job's launcher wants `{l}` ({all})"),
        None => format!("bind each rank to a core ({all})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_names_with_spaces() {
        for name in [
            "SHARED::tables",
            "SHARED::eos tables v2",
            "SHARED::a  b",
            "SHARED::x node 3",
        ] {
            for (scope, index) in [(Scope::Node, 0), (Scope::Socket, 1), (Scope::Numa, 12)] {
                let instance = ScopeInstance {
                    scope,
                    index,
                    os_index: None,
                };
                let label = allocator_label(name, &instance);
                assert_eq!(
                    split_allocator_label(&label),
                    (name, instance.to_string().as_str())
                );
            }
        }
        assert_eq!(split_allocator_label("planted"), ("planted", ""));
        assert_eq!(split_allocator_label("a b c"), ("a b c", ""));
    }
}
