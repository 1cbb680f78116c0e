//! `nodeshm._native`: the Rust side of the `nodeshm` Python package. The public API, its
//! docstrings and the NumPy arrays live in `nodeshm/__init__.py`; this module hands it blocks as
//! (address, size) with an owner that keeps the mapping alive, and raises the error classes of
//! `nodeshm/_errors.py` with their fields.
//!
//! Every class is `unsendable`: handles, blocks and locks belong to the thread that made them
//! (the arena's user lock must be released by the thread that took it).

use std::rc::Rc;
use std::time::Duration;

use mpi::traits::Communicator;
use nodeshm::arena::{Arena, EntryInfo, HugePages, Options, Stats, Unlink};
use nodeshm::{Allocator, Error, NumaPolicy, ResourceManager, Scope, Traits, UnlinkPolicy};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// The Python exception for `e`: an instance of the `nodeshm._errors` class of its kind, with
/// `.code` and the variant's fields as attributes (the failing rank's error, for collective
/// calls, with `.rank` and `.failed_ranks`).
fn to_py(py: Python<'_>, e: Error) -> PyErr {
    match build_error(py, &e) {
        Ok(err) => err,
        Err(fallback) => fallback,
    }
}

fn build_error(py: Python<'_>, e: &Error) -> PyResult<PyErr> {
    let root = e.root();
    let class = match root {
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::InvalidName { .. } => "InvalidName",
        Error::SizeMismatch { .. } => "SizeMismatch",
        Error::OutOfSpace { .. } => "OutOfSpace",
        Error::NotHeld { .. } => "NotHeld",
        Error::Timeout { .. } => "Timeout",
        Error::NotAnArena { .. } => "NotAnArena",
        Error::Incompatible { .. } => "Incompatible",
        Error::NoSpaceInBacking { .. } => "NoSpaceInBacking",
        Error::Io { .. } => "IoError",
        Error::AlreadyExists(_) => "AlreadyExists",
        Error::Binding(_) => "Binding",
        Error::Mpi(_) => "MpiError",
        Error::Unsupported(_) => "Unsupported",
        Error::Corrupted(_) => "Corrupted",
        Error::Placement(_) => "Placement",
        Error::Untrusted { .. } => "Untrusted",
        Error::MpiFinalized(_) => "MpiFinalized",
        Error::Internal(_) | Error::Collective { .. } => "InternalError",
    };
    let module = py.import("nodeshm._errors")?;
    let exc = module.getattr(class)?.call1((e.to_string(),))?;
    exc.setattr("code", e.code() as i32)?;
    if let Error::Collective {
        rank, failed_ranks, ..
    } = e
    {
        exc.setattr("rank", *rank)?;
        exc.setattr("failed_ranks", *failed_ranks)?;
    }
    match root {
        Error::InvalidName { name, reason } => {
            exc.setattr("name", name)?;
            exc.setattr("reason", reason)?;
        }
        Error::SizeMismatch {
            name,
            existing,
            requested,
        } => {
            exc.setattr("name", name)?;
            exc.setattr("existing", *existing)?;
            exc.setattr("requested", *requested)?;
        }
        Error::OutOfSpace {
            requested,
            largest_free,
            free,
            capacity,
        } => {
            exc.setattr("requested", *requested)?;
            exc.setattr("largest_free", *largest_free)?;
            exc.setattr("free", *free)?;
            exc.setattr("capacity", *capacity)?;
        }
        Error::NoSpaceInBacking {
            dir,
            requested,
            available,
        } => {
            exc.setattr("dir", dir.display().to_string())?;
            exc.setattr("requested", *requested)?;
            exc.setattr("available", *available)?;
        }
        Error::Timeout { what, waited, .. } => {
            exc.setattr("what", what)?;
            exc.setattr("waited", waited.as_secs_f64())?;
        }
        Error::NotAnArena { path, reason } | Error::Incompatible { path, reason } => {
            exc.setattr("path", path.display().to_string())?;
            exc.setattr("reason", reason)?;
        }
        Error::Untrusted {
            path, owner, uid, ..
        } => {
            exc.setattr("path", path.display().to_string())?;
            exc.setattr("owner", *owner)?;
            exc.setattr("uid", *uid)?;
        }
        _ => {}
    }
    Ok(PyErr::from_value(exc))
}

trait OrPy<T> {
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrPy<T> for nodeshm::Result<T> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

fn invalid(what: String) -> Error {
    Error::InvalidArgument(what)
}

fn seconds(s: f64, what: &str) -> nodeshm::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| invalid(format!("{what} {s} is not a duration")))
}

/// What keeps a block's memory mapped: an allocator handle or an arena handle.
#[derive(Clone)]
enum Owner {
    Allocator(Allocator),
    Arena(Rc<Arena>),
}

impl Owner {
    fn arena(&self) -> &Arena {
        match self {
            Owner::Allocator(a) => a.arena(),
            Owner::Arena(a) => a,
        }
    }
    fn lock_timeout(&self) -> Duration {
        match self {
            Owner::Allocator(a) => a.traits().lock_timeout,
            Owner::Arena(_) => Duration::from_secs(30),
        }
    }
}

/// A block's memory, for `numpy` (`__array_interface__` in the Python layer). Holds one
/// reference until `release()` or garbage collection, and the mapping until it is collected.
#[pyclass(unsendable, module = "nodeshm._native")]
struct Block {
    owner: Owner,
    address: usize,
    nbytes: u64,
    offset: u64,
    readonly: bool,
    created: bool,
    held: bool,
}

impl Block {
    fn new(owner: &Owner, b: nodeshm::Block<'_>, held: bool) -> Block {
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
    fn release(&mut self, py: Python<'_>) -> PyResult<()> {
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
struct Lock {
    owner: Owner,
    timeout: Duration,
    held: bool,
    owner_died: bool,
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

fn stats_dict<'py>(py: Python<'py>, s: Stats) -> PyResult<Bound<'py, PyDict>> {
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

fn entries_list(py: Python<'_>, entries: Vec<EntryInfo>) -> PyResult<Bound<'_, PyList>> {
    PyList::new(
        py,
        entries
            .into_iter()
            .map(|e| (e.name, e.offset, e.size, e.refcount)),
    )
}

/// The operations allocators and arenas share.
fn allocate(py: Python<'_>, owner: &Owner, name: &str, nbytes: u64, align: u64) -> PyResult<Block> {
    let b = owner.arena().allocate_aligned(name, nbytes, align).py(py)?;
    Ok(Block::new(owner, b, true))
}

fn find(py: Python<'_>, owner: &Owner, name: &str) -> PyResult<Option<Block>> {
    Ok(owner
        .arena()
        .find(name)
        .py(py)?
        .map(|b| Block::new(owner, b, true)))
}

fn deallocate(py: Python<'_>, block: &mut Block) -> PyResult<()> {
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

/// A `SHARED::` allocator (`nodeshm.Allocator` wraps it).
#[pyclass(unsendable, module = "nodeshm._native", name = "Allocator")]
struct PyAllocator {
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
fn parse<T: Copy>(what: &str, s: &str, choices: &[(&str, T)]) -> nodeshm::Result<T> {
    choices
        .iter()
        .find(|(name, _)| *name == s)
        .map(|&(_, value)| value)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            invalid(format!("{what} {s:?}: use one of {}", names.join(", ")))
        })
}

fn parse_scope(s: &str) -> nodeshm::Result<Scope> {
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

fn parse_unlink(s: &str) -> nodeshm::Result<UnlinkPolicy> {
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

fn parse_huge(s: &str) -> nodeshm::Result<HugePages> {
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

fn parse_numa(s: &str) -> nodeshm::Result<NumaPolicy> {
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
struct PyManager {
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

/// An arena without MPI (`nodeshm.Arena` wraps it).
#[pyclass(unsendable, module = "nodeshm._native", name = "Arena")]
struct PyArena {
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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Block>()?;
    m.add_class::<Lock>()?;
    m.add_class::<PyAllocator>()?;
    m.add_class::<PyManager>()?;
    m.add_class::<PyArena>()?;
    Ok(())
}
