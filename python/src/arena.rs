//! An arena without MPI, as `nodeshm.Arena` uses it.

use std::rc::Rc;
use std::time::Duration;

use nodeshm::arena::{Arena, Options, Unlink};
use nodeshm::UnlinkPolicy;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::block::{allocate, deallocate, entries_list, find, stats_dict, Block, Lock, Owner};
use crate::errors::{invalid, seconds, to_py, OrPy};
use crate::manager::{parse_huge, parse_unlink};

/// An arena without MPI (`nodeshm.Arena` wraps it).
#[pyclass(unsendable, module = "nodeshm._native", name = "Arena")]
pub(crate) struct PyArena {
    owner: Owner,
    lock_timeout: Duration,
}

#[pymethods]
impl PyArena {
    #[staticmethod]
    #[pyo3(signature = (name, size, unlink = "on_last_detach", mode = 0o600, dir = None,
                        huge_pages = "never", lock_timeout = 30.0, expected_names = None))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        py: Python<'_>,
        name: &str,
        size: u64,
        unlink: &str,
        mode: u32,
        dir: Option<String>,
        huge_pages: &str,
        lock_timeout: f64,
        expected_names: Option<u64>,
    ) -> PyResult<PyArena> {
        let lock_timeout = seconds(lock_timeout, "lock_timeout").py(py)?;
        let unlink = match parse_unlink(unlink).py(py)? {
            UnlinkPolicy::AfterAttach => {
                return Err(to_py(
                    py,
                    invalid(
                        "unlink \"after_attach\" needs a peer count: use it through \
                         ResourceManager, or \"on_last_detach\" / \"never\" here"
                            .into(),
                    ),
                ))
            }
            UnlinkPolicy::OnLastDetach => Unlink::OnLastDetach,
            UnlinkPolicy::Never => Unlink::Never,
        };
        let mut options = Options::new(size)
            .unlink(unlink)
            .mode(mode)
            .huge_pages(parse_huge(huge_pages).py(py)?)
            .lock_timeout(lock_timeout);
        if let Some(d) = dir {
            options = options.dir(d);
        }
        if let Some(n) = expected_names {
            options = options.expected_names(n);
        }
        let arena = Arena::create(name, &options).py(py)?;
        Ok(PyArena {
            owner: Owner::Arena(Rc::new(arena)),
            lock_timeout,
        })
    }

    #[staticmethod]
    #[pyo3(signature = (name, timeout = 30.0, dir = None, lock_timeout = 30.0))]
    fn attach(
        py: Python<'_>,
        name: &str,
        timeout: f64,
        dir: Option<String>,
        lock_timeout: f64,
    ) -> PyResult<PyArena> {
        let lock_timeout = seconds(lock_timeout, "lock_timeout").py(py)?;
        let mut options = Options::new(0)
            .attach_timeout(seconds(timeout, "timeout").py(py)?)
            .lock_timeout(lock_timeout);
        if let Some(d) = dir {
            options = options.dir(d);
        }
        let arena = Arena::attach_with(name, &options).py(py)?;
        Ok(PyArena {
            owner: Owner::Arena(Rc::new(arena)),
            lock_timeout,
        })
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
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.owner.arena().stats().py(py)?)
    }
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        entries_list(py, self.owner.arena().entries().py(py)?)
    }
    fn actual_size(&self, py: Python<'_>) -> PyResult<u64> {
        self.owner.arena().actual_size().py(py)
    }
    /// Gives the blocks of removed small names (kept for reuse) back to the heap.
    fn coalesce(&self, py: Python<'_>) -> PyResult<()> {
        self.owner.arena().coalesce().py(py)
    }
    #[getter]
    fn path(&self) -> String {
        self.owner.arena().path().display().to_string()
    }
    #[getter]
    fn size(&self) -> u64 {
        self.owner.arena().size()
    }
    fn lock(&self) -> Lock {
        Lock {
            owner: self.owner.clone(),
            timeout: self.lock_timeout,
            held: false,
            owner_died: false,
        }
    }
}
