//! Blocks and the user lock as Python objects, and the operations allocators and arenas
//! share.

use std::rc::Rc;
use std::time::Duration;

use nodeshm::arena::{Arena, EntryInfo, Stats};
use nodeshm::{Allocator, Error};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{to_py, OrPy};

/// What keeps a block's memory mapped: an allocator handle or an arena handle.
#[derive(Clone)]
pub(crate) enum Owner {
    Allocator(Allocator),
    Arena(Rc<Arena>),
}

impl Owner {
    pub(crate) fn arena(&self) -> &Arena {
        match self {
            Owner::Allocator(a) => a.arena(),
            Owner::Arena(a) => a,
        }
    }
    pub(crate) fn lock_timeout(&self) -> Duration {
        match self {
            Owner::Allocator(a) => a.traits().lock_timeout,
            Owner::Arena(_) => Duration::from_secs(30),
        }
    }
}

/// A block's memory, for `numpy` (`__array_interface__` in the Python layer). Holds one
/// reference until `release()` or garbage collection, and the mapping until it is collected.
#[pyclass(unsendable, module = "nodeshm._native")]
pub(crate) struct Block {
    pub(crate) owner: Owner,
    pub(crate) address: usize,
    pub(crate) nbytes: u64,
    pub(crate) offset: u64,
    pub(crate) readonly: bool,
    pub(crate) created: bool,
    pub(crate) held: bool,
}

impl Block {
    pub(crate) fn new(owner: &Owner, b: nodeshm::Block<'_>, held: bool) -> Block {
        Block {
            owner: owner.clone(),
            address: b.as_ptr() as usize,
            nbytes: b.len(),
            offset: b.offset(),
            readonly: false,
            created: b.created(),
            held,
        }
    }
}

#[pymethods]
impl Block {
    /// Address of the first byte in this process.
    #[getter]
    fn address(&self) -> usize {
        self.address
    }
    /// Size in bytes.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.nbytes
    }
    /// Offset in the arena (the same in every process).
    #[getter]
    fn offset(&self) -> u64 {
        self.offset
    }
    /// Whether arrays on it are read-only (get_or_init tables).
    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }
    /// Whether this call created it (zeroed).
    #[getter]
    fn created(&self) -> bool {
        self.created
    }
    /// Whether it still holds its reference.
    #[getter]
    fn held(&self) -> bool {
        self.held
    }
    /// Releases the reference now (the mapping stays until this object is collected).
    pub(crate) fn release(&mut self, py: Python<'_>) -> PyResult<()> {
        if std::mem::take(&mut self.held) {
            self.owner
                .arena()
                .deallocate_ptr(self.address as *const u8)
                .py(py)?;
        }
        Ok(())
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.held {
            let _ = self.owner.arena().deallocate_ptr(self.address as *const u8);
        }
    }
}

/// The robust user lock as a context manager (taken and released on one thread).
#[pyclass(unsendable, module = "nodeshm._native")]
pub(crate) struct Lock {
    pub(crate) owner: Owner,
    pub(crate) timeout: Duration,
    pub(crate) held: bool,
    pub(crate) owner_died: bool,
}

#[pymethods]
impl Lock {
    fn __enter__<'a>(mut slf: PyRefMut<'a, Self>, py: Python<'a>) -> PyResult<PyRefMut<'a, Self>> {
        let guard = slf.owner.arena().lock_user(slf.timeout).py(py)?;
        let died = guard.previous_owner_died();
        guard.leak(); // released in __exit__, on this thread (the class is unsendable)
        slf.held = true;
        slf.owner_died = died;
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(
        &mut self,
        py: Python<'_>,
        _args: &Bound<'_, pyo3::types::PyTuple>,
    ) -> PyResult<bool> {
        if std::mem::take(&mut self.held) {
            // SAFETY: __enter__ leaked its guard; no guard of this thread holds the lock.
            unsafe { self.owner.arena().force_unlock_user() }.py(py)?;
        }
        Ok(false)
    }

    /// True when the previous holder died holding the lock.
    #[getter]
    fn owner_died(&self) -> bool {
        self.owner_died
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.held {
            // SAFETY: as in __exit__ (a lock object dropped while held, without __exit__).
            let _ = unsafe { self.owner.arena().force_unlock_user() };
        }
    }
}

pub(crate) fn stats_dict<'py>(py: Python<'py>, s: Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("capacity", s.capacity)?;
    d.set_item("used", s.used)?;
    d.set_item("free", s.free)?;
    d.set_item("largest_free", s.largest_free)?;
    d.set_item("live_blocks", s.live_blocks)?;
    d.set_item("requested", s.requested)?;
    d.set_item("high_water", s.high_water)?;
    d.set_item("recoveries", s.recoveries)?;
    Ok(d)
}

pub(crate) fn entries_list(py: Python<'_>, entries: Vec<EntryInfo>) -> PyResult<Bound<'_, PyList>> {
    PyList::new(
        py,
        entries
            .into_iter()
            .map(|e| (e.name, e.offset, e.size, e.refcount)),
    )
}

/// The operations allocators and arenas share.
pub(crate) fn allocate(
    py: Python<'_>,
    owner: &Owner,
    name: &str,
    nbytes: u64,
    align: u64,
) -> PyResult<Block> {
    let b = owner.arena().allocate_aligned(name, nbytes, align).py(py)?;
    Ok(Block::new(owner, b, true))
}

pub(crate) fn find(py: Python<'_>, owner: &Owner, name: &str) -> PyResult<Option<Block>> {
    Ok(owner
        .arena()
        .find(name)
        .py(py)?
        .map(|b| Block::new(owner, b, true)))
}

pub(crate) fn deallocate(py: Python<'_>, block: &mut Block) -> PyResult<()> {
    if !block.held {
        return Err(to_py(
            py,
            Error::NotHeld {
                what: format!("the block at offset {}", block.offset),
                detail: "it was released already".into(),
            },
        ));
    }
    block.release(py)
}
