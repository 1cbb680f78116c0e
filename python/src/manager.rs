//! The MPI side: the resource manager and its `SHARED::` allocators, with the keywords of
//! `make_resource` parsed from their Python spellings.

use mpi::traits::Communicator;
use nodeshm::arena::HugePages;
use nodeshm::{Allocator, NumaPolicy, ResourceManager, Scope, Traits, UnlinkPolicy};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::block::{allocate, deallocate, entries_list, find, stats_dict, Block, Lock, Owner};
use crate::errors::{invalid, seconds, OrPy};

/// A `SHARED::` allocator (`nodeshm.Allocator` wraps it).
#[pyclass(unsendable, module = "nodeshm._native", name = "Allocator")]
pub(crate) struct PyAllocator {
    owner: Owner,
}

impl PyAllocator {
    fn inner(&self) -> &Allocator {
        match &self.owner {
            Owner::Allocator(a) => a,
            Owner::Arena(_) => unreachable!("a PyAllocator always owns an allocator"),
        }
    }
}

#[pymethods]
impl PyAllocator {
    #[getter]
    fn name(&self) -> String {
        self.inner().name().to_string()
    }
    #[pyo3(signature = (name, nbytes, align = 64))]
    fn allocate(&self, py: Python<'_>, name: &str, nbytes: u64, align: u64) -> PyResult<Block> {
        allocate(py, &self.owner, name, nbytes, align)
    }
    fn find(&self, py: Python<'_>, name: &str) -> PyResult<Option<Block>> {
        find(py, &self.owner, name)
    }
    fn deallocate(&self, py: Python<'_>, mut block: PyRefMut<'_, Block>) -> PyResult<()> {
        deallocate(py, &mut block)
    }
    /// Collective over the allocator's ranks: rank 0 allocates `nbytes` and, if the block is
    /// new, calls `init(block)` with a writable view; then every rank gets the block read-only.
    fn get_or_init(
        &self,
        py: Python<'_>,
        name: &str,
        nbytes: u64,
        align: u64,
        init: Bound<'_, PyAny>,
    ) -> PyResult<Block> {
        let a = self.inner();
        let comm = a.communicator();
        let first = if comm.rank() == 0 {
            a.allocate_aligned(name, nbytes, align).and_then(|b| {
                let mut block = Block::new(&self.owner, b, true);
                if block.created {
                    let view = Block::new(&self.owner, b, false);
                    if let Err(e) = init.call1((view,)) {
                        let _ = block.release(py);
                        return Err(invalid(format!("the init function of {name:?} raised {e}")));
                    }
                }
                Ok(Some(block))
            })
        } else {
            Ok(None)
        };
        let first = nodeshm::comm::agree(comm, first).py(py)?;
        let mine = match first {
            Some(block) => Ok(block),
            None => a
                .allocate_aligned(name, nbytes, align)
                .map(|b| Block::new(&self.owner, b, true)),
        };
        let mut block = nodeshm::comm::agree(comm, mine).py(py)?;
        block.readonly = true;
        Ok(block)
    }
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.inner().stats().py(py)?)
    }
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        entries_list(py, self.inner().entries().py(py)?)
    }
    fn actual_size(&self, py: Python<'_>) -> PyResult<u64> {
        self.inner().actual_size().py(py)
    }
    /// Gives the blocks of removed small names (kept for reuse) back to the heap.
    fn coalesce(&self, py: Python<'_>) -> PyResult<()> {
        self.inner().coalesce().py(py)
    }
    /// The allocator's communicator as a Fortran handle (owned by the allocator).
    #[getter]
    fn comm_f(&self, py: Python<'_>) -> PyResult<i32> {
        nodeshm::comm::mpi_running().py(py)?;
        // SAFETY: the communicator is valid while the allocator lives; converting the handle
        // has no other precondition.
        Ok(unsafe {
            mpi::ffi::RSMPI_Comm_c2f(mpi::raw::AsRaw::as_raw(self.inner().communicator()))
        })
    }
    #[getter]
    fn placement(&self) -> String {
        format!("{:?}", self.inner().placement())
    }
    #[getter]
    fn shm_path(&self) -> String {
        self.inner().shm_path().display().to_string()
    }
    #[getter]
    fn scope_instance(&self) -> String {
        self.inner().scope_instance().to_string()
    }
    fn lock(&self) -> Lock {
        Lock {
            owner: self.owner.clone(),
            timeout: self.owner.lock_timeout(),
            held: false,
            owner_died: false,
        }
    }
}

/// One of `choices`, by its Python spelling; the error lists them all.
pub(crate) fn parse<T: Copy>(what: &str, s: &str, choices: &[(&str, T)]) -> nodeshm::Result<T> {
    choices
        .iter()
        .find(|(name, _)| *name == s)
        .map(|&(_, value)| value)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            invalid(format!("{what} {s:?}: use one of {}", names.join(", ")))
        })
}

pub(crate) fn parse_scope(s: &str) -> nodeshm::Result<Scope> {
    parse(
        "scope",
        s,
        &[
            ("node", Scope::Node),
            ("socket", Scope::Socket),
            ("numa", Scope::Numa),
        ],
    )
}

pub(crate) fn parse_unlink(s: &str) -> nodeshm::Result<UnlinkPolicy> {
    parse(
        "unlink",
        s,
        &[
            ("after_attach", UnlinkPolicy::AfterAttach),
            ("on_last_detach", UnlinkPolicy::OnLastDetach),
            ("never", UnlinkPolicy::Never),
        ],
    )
}

pub(crate) fn parse_huge(s: &str) -> nodeshm::Result<HugePages> {
    parse(
        "huge_pages",
        s,
        &[
            ("never", HugePages::Never),
            ("transparent", HugePages::Transparent),
            ("required", HugePages::Required),
        ],
    )
}

pub(crate) fn parse_numa(s: &str) -> nodeshm::Result<NumaPolicy> {
    parse(
        "numa",
        s,
        &[
            ("auto", NumaPolicy::Auto),
            ("first_touch", NumaPolicy::FirstTouch),
            ("bind", NumaPolicy::Bind),
            ("interleave", NumaPolicy::Interleave),
        ],
    )
}

/// A resource manager over an mpi4py communicator (given as its Fortran handle).
#[pyclass(unsendable, module = "nodeshm._native", name = "ResourceManager")]
pub(crate) struct PyManager {
    rm: ResourceManager,
}

#[pymethods]
impl PyManager {
    #[new]
    fn new(py: Python<'_>, comm_f: i32) -> PyResult<Self> {
        let user = nodeshm::comm::from_fortran(comm_f).py(py)?;
        let rm = ResourceManager::new(&user).py(py)?;
        Ok(PyManager { rm })
    }

    #[pyo3(signature = (name, size, scope = "node", unlink = "after_attach", mode = 0o600,
                        dir = None, numa = "auto", huge_pages = "never", prefault = false,
                        attach_timeout = 30.0, lock_timeout = 30.0, expected_names = None))]
    #[allow(clippy::too_many_arguments)]
    fn make_resource(
        &self,
        py: Python<'_>,
        name: &str,
        size: u64,
        scope: &str,
        unlink: &str,
        mode: u32,
        dir: Option<String>,
        numa: &str,
        huge_pages: &str,
        prefault: bool,
        attach_timeout: f64,
        lock_timeout: f64,
        expected_names: Option<u64>,
    ) -> PyResult<PyAllocator> {
        // Every rank parses the same keywords; a bad one fails on every rank alike, before the
        // collective call (the manager agrees on it).
        let traits = (|| -> nodeshm::Result<Traits> {
            let mut t = Traits::new(size)
                .scope(parse_scope(scope)?)
                .unlink(parse_unlink(unlink)?)
                .mode(mode)
                .numa(parse_numa(numa)?)
                .huge_pages(parse_huge(huge_pages)?)
                .prefault(prefault)
                .attach_timeout(seconds(attach_timeout, "attach_timeout")?)
                .lock_timeout(seconds(lock_timeout, "lock_timeout")?);
            if let Some(d) = dir {
                t = t.dir(d);
            }
            if let Some(n) = expected_names {
                t = t.expected_names(n);
            }
            Ok(t)
        })();
        let traits = self.rm.agree_on(traits).py(py)?;
        let a = self.rm.make_resource(name, traits).py(py)?;
        Ok(PyAllocator {
            owner: Owner::Allocator(a),
        })
    }

    fn allocators(&self) -> Vec<String> {
        self.rm.allocators()
    }

    fn get_allocator(&self, name: &str) -> Option<PyAllocator> {
        self.rm.get_allocator(name).map(|a| PyAllocator {
            owner: Owner::Allocator(a),
        })
    }

    fn remove_allocator(&self, name: &str) -> Option<PyAllocator> {
        self.rm.remove_allocator(name).map(|a| PyAllocator {
            owner: Owner::Allocator(a),
        })
    }

    #[getter]
    fn job_token(&self) -> u64 {
        self.rm.job_token()
    }
}
