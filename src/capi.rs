//! The C ABI (`include/nodeshm.h`): the manager API for C, C++ and Fortran.
//!
//! Every function returns a status (`NODESHM_OK` = 0, else an [`ErrorCode`]); the message of the
//! last failure on the calling thread is `nodeshm_last_error()`. No panic crosses the boundary:
//! each body runs under `catch_unwind` and a panic becomes `NODESHM_EINTERNAL`. Communicators
//! cross as Fortran handles (`MPI_Fint`), which every MPI can convert.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use mpi::raw::AsRaw;

use crate::arena::{HugePages, Stats};
use crate::error::{Error, ErrorCode, Result};
use crate::manager::{Allocator, ResourceManager, Traits, UnlinkPolicy};
use crate::placement::NumaPolicy;
use crate::topology::Scope;

/// Opaque manager handle.
pub struct NodeshmManager(ResourceManager);
/// Opaque allocator handle (each handle holds one reference to the allocator).
pub struct NodeshmAllocator(Allocator);
/// Opaque traits handle.
pub struct NodeshmTraits(Traits);

/// Arena figures (`nodeshm_stats_t`): the Rust [`Stats`], which is `#[repr(C)]`.
pub type NodeshmStats = Stats;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// Runs `body`, turning errors and panics into status codes.
fn guard(body: impl FnOnce() -> Result<()>) -> c_int {
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            e.code() as c_int
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            set_last_error(&Error::Internal(what.to_string()).to_string());
            ErrorCode::Internal as c_int
        }
    }
}

fn null(what: &str) -> Error {
    Error::InvalidArgument(format!("{what} is NULL"))
}

/// # Safety
/// `p` is NULL or points to a live `T` created by this library.
unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: per the contract, non-null handles point to live objects we boxed.
    unsafe { p.as_ref() }.ok_or_else(|| null(what))
}

/// # Safety
/// `s` is NULL or a NUL-terminated string.
unsafe fn string<'a>(s: *const c_char, what: &str) -> Result<&'a str> {
    if s.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| Error::InvalidName {
            name: "<not UTF-8>".into(),
            reason: format!("{what} must be UTF-8"),
        })
}

/// # Safety
/// `out` is NULL or writable.
unsafe fn put<T>(out: *mut T, value: T, what: &str) -> Result<()> {
    if out.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null and writable per the contract.
    unsafe { out.write(value) };
    Ok(())
}

/// The message of the last failure on this thread ("" if none). Valid until the next call on
/// this thread.
#[no_mangle]
pub extern "C" fn nodeshm_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A short name for a status code.
#[no_mangle]
pub extern "C" fn nodeshm_strerror(code: c_int) -> *const c_char {
    let text: &'static CStr = match ErrorCode::from_i32(code) {
        None if code == 0 => c"success",
        None => c"unknown status code",
        Some(c) => match c {
            ErrorCode::InvalidArgument => c"invalid argument",
            ErrorCode::InvalidName => c"invalid name",
            ErrorCode::SizeMismatch => c"size mismatch",
            ErrorCode::OutOfSpace => c"arena full",
            ErrorCode::NotHeld => c"not held by this process",
            ErrorCode::Timeout => c"timed out",
            ErrorCode::NotAnArena => c"not an arena",
            ErrorCode::Incompatible => c"incompatible arena layout",
            ErrorCode::NoSpaceInBacking => c"backing directory full",
            ErrorCode::Io => c"I/O error",
            ErrorCode::AlreadyExists => c"already exists",
            ErrorCode::Binding => c"CPU binding spans several scope instances",
            ErrorCode::Mpi => c"MPI error",
            ErrorCode::Unsupported => c"unsupported",
            ErrorCode::Corrupted => c"arena metadata corrupted",
            ErrorCode::Placement => c"memory placement failed",
            ErrorCode::Internal => c"internal error",
            ErrorCode::Untrusted => c"arena owned by an untrusted user",
            ErrorCode::MpiFinalized => c"MPI is not running (finalized or not initialised)",
        },
    };
    text.as_ptr()
}

/// Creates traits for an arena of `size` bytes (node scope, unlink after attach, mode 0600).
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_traits_create(size: u64, out: *mut *mut NodeshmTraits) -> c_int {
    // SAFETY: forwarded contract.
    guard(|| unsafe {
        put(
            out,
            Box::into_raw(Box::new(NodeshmTraits(Traits::new(size)))),
            "out",
        )
    })
}

/// # Safety
/// `t` is NULL or from `nodeshm_traits_create`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_traits_destroy(t: *mut NodeshmTraits) -> c_int {
    guard(|| {
        if !t.is_null() {
            // SAFETY: created by Box::into_raw in nodeshm_traits_create, destroyed once.
            drop(unsafe { Box::from_raw(t) });
        }
        Ok(())
    })
}

/// # Safety
/// `t` is NULL or a live traits handle.
unsafe fn edit(t: *mut NodeshmTraits, f: impl FnOnce(Traits) -> Result<Traits>) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let t = unsafe { t.as_mut() }.ok_or_else(|| null("traits"))?;
        t.0 = f(t.0.clone())?;
        Ok(())
    })
}

/// Scope: `NODESHM_SCOPE_NODE` (0), `_SOCKET` (1), `_NUMA` (2).
///
/// # Safety
/// `t` is NULL or a live traits handle.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_traits_set_scope(t: *mut NodeshmTraits, scope: c_int) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        edit(t, |tr| match scope {
            0 => Ok(tr.scope(Scope::Node)),
            1 => Ok(tr.scope(Scope::Socket)),
            2 => Ok(tr.scope(Scope::Numa)),
            _ => Err(Error::InvalidArgument(format!(
                "scope {scope}: use NODESHM_SCOPE_NODE, _SOCKET or _NUMA"
            ))),
        })
    }
}

/// Unlink policy: `NODESHM_UNLINK_AFTER_ATTACH` (0), `_ON_LAST_DETACH` (1), `_NEVER` (2).
///
/// # Safety
/// `t` is NULL or a live traits handle.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_traits_set_unlink(t: *mut NodeshmTraits, policy: c_int) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        edit(t, |tr| match policy {
            0 => Ok(tr.unlink(UnlinkPolicy::AfterAttach)),
            1 => Ok(tr.unlink(UnlinkPolicy::OnLastDetach)),
            2 => Ok(tr.unlink(UnlinkPolicy::Never)),
            _ => Err(Error::InvalidArgument(format!(
                "unlink policy {policy}: use NODESHM_UNLINK_*"
            ))),
        })
    }
}

/// NUMA policy: `NODESHM_NUMA_AUTO` (0), `_FIRST_TOUCH` (1), `_BIND` (2), `_INTERLEAVE` (3).
///
/// # Safety
/// `t` is NULL or a live traits handle.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_traits_set_numa(t: *mut NodeshmTraits, policy: c_int) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        edit(t, |tr| match policy {
            0 => Ok(tr.numa(NumaPolicy::Auto)),
            1 => Ok(tr.numa(NumaPolicy::FirstTouch)),
            2 => Ok(tr.numa(NumaPolicy::Bind)),
            3 => Ok(tr.numa(NumaPolicy::Interleave)),
            _ => Err(Error::InvalidArgument(format!(
                "NUMA policy {policy}: use NODESHM_NUMA_*"
            ))),
        })
    }
}

/// Huge pages: `NODESHM_HUGE_NEVER` (0), `_TRANSPARENT` (1), `_REQUIRED` (2); and prefault
/// (non-zero: every rank maps every page at creation).
///
/// # Safety
/// `t` is NULL or a live traits handle.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_traits_set_pages(
    t: *mut NodeshmTraits,
    huge: c_int,
    prefault: c_int,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        edit(t, |tr| {
            let huge = match huge {
                0 => HugePages::Never,
                1 => HugePages::Transparent,
                2 => HugePages::Required,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "huge pages {huge}: use NODESHM_HUGE_*"
                    )))
                }
            };
            Ok(tr.huge_pages(huge).prefault(prefault != 0))
        })
    }
}

/// File mode of the shm object (e.g. 0600).
///
/// # Safety
/// `t` is NULL or a live traits handle.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_traits_set_mode(t: *mut NodeshmTraits, mode: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { edit(t, |tr| Ok(tr.mode(mode))) }
}

/// Backing directory (NULL: `$NODESHM_SHM_DIR`, else `/dev/shm`).
///
/// # Safety
/// `t` is NULL or a live traits handle; `dir` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_traits_set_dir(
    t: *mut NodeshmTraits,
    dir: *const c_char,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        edit(t, |mut tr| {
            tr.dir = if dir.is_null() {
                None
            } else {
                Some(PathBuf::from(string(dir, "dir")?))
            };
            Ok(tr)
        })
    }
}

/// Attach and lock timeouts in seconds.
///
/// # Safety
/// `t` is NULL or a live traits handle.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_traits_set_timeouts(
    t: *mut NodeshmTraits,
    attach_s: f64,
    lock_s: f64,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        edit(t, |tr| {
            let d = |s: f64, what| {
                Duration::try_from_secs_f64(s).map_err(|_| {
                    Error::InvalidArgument(format!("{what} timeout {s} s is not a duration"))
                })
            };
            Ok(tr
                .attach_timeout(d(attach_s, "attach")?)
                .lock_timeout(d(lock_s, "lock")?))
        })
    }
}

/// Collective over `comm` (a Fortran handle: `MPI_Comm_c2f(comm)` in C): a manager.
///
/// # Safety
/// MPI is initialised; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_manager_create(
    comm: c_int,
    out: *mut *mut NodeshmManager,
) -> c_int {
    guard(|| {
        crate::comm::mpi_running()?;
        // A NULL `out` on one rank must fail on every rank, before the collective creation.
        let out_ok = if out.is_null() {
            Err(null("out"))
        } else {
            Ok(())
        };
        let user = crate::comm::from_fortran(comm)?;
        crate::comm::agree(&user, out_ok)?;
        let rm = ResourceManager::new(&user)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, Box::into_raw(Box::new(NodeshmManager(rm))), "out") }
    })
}

/// Destroys a manager. Allocator handles stay valid until released.
///
/// # Safety
/// `m` is NULL or from `nodeshm_manager_create`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_manager_destroy(m: *mut NodeshmManager) -> c_int {
    guard(|| {
        if !m.is_null() {
            // SAFETY: created by Box::into_raw, destroyed once.
            drop(unsafe { Box::from_raw(m) });
        }
        Ok(())
    })
}

/// Collective over the manager's communicator: makes allocator `name` (`SHARED::...`).
///
/// # Safety
/// Handles are NULL or live; `name` is NULL or NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_make_resource(
    m: *const NodeshmManager,
    name: *const c_char,
    traits: *const NodeshmTraits,
    out: *mut *mut NodeshmAllocator,
) -> c_int {
    guard(|| {
        crate::comm::mpi_running()?;
        // The manager carries the communicator, so it must be valid on every rank; every other
        // argument is checked on each rank and the outcome agreed on by all of them first.
        // SAFETY: forwarded contract.
        let m = unsafe { handle(m, "manager")? };
        let args = (|| {
            // SAFETY: forwarded contract.
            let t = unsafe { handle(traits, "traits")? };
            // SAFETY: forwarded contract.
            let name = unsafe { string(name, "name")? };
            if out.is_null() {
                return Err(null("out"));
            }
            Ok((name, t.0.clone()))
        })();
        let (name, traits) = m.0.agree_on(args)?;
        let a = m.0.make_resource(name, traits)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, Box::into_raw(Box::new(NodeshmAllocator(a))), "out") }
    })
}

/// A new handle to allocator `name`, or NULL in `*out` (status OK) if there is none.
///
/// # Safety
/// `m` is NULL or live; `name` is NULL or NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_get_allocator(
    m: *const NodeshmManager,
    name: *const c_char,
    out: *mut *mut NodeshmAllocator,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let (m, name) = unsafe { (handle(m, "manager")?, string(name, "name")?) };
        let found = m.0.get_allocator(name).map_or(std::ptr::null_mut(), |a| {
            Box::into_raw(Box::new(NodeshmAllocator(a)))
        });
        // SAFETY: forwarded contract.
        unsafe { put(out, found, "out") }
    })
}

/// Releases an allocator handle (the arena goes when every handle of every rank is released).
///
/// # Safety
/// `a` is NULL or a live allocator handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_allocator_release(a: *mut NodeshmAllocator) -> c_int {
    guard(|| {
        if !a.is_null() {
            // SAFETY: created by Box::into_raw, released once.
            drop(unsafe { Box::from_raw(a) });
        }
        Ok(())
    })
}

/// Block `name` of `bytes` bytes (64-byte aligned), created zeroed if new; `*ptr` gets its
/// address. Independent.
///
/// # Safety
/// `a` is NULL or live; `name` is NULL or NUL-terminated; `ptr` is writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_allocate(
    a: *const NodeshmAllocator,
    name: *const c_char,
    bytes: u64,
    ptr: *mut *mut c_void,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { nodeshm_allocate_aligned(a, name, bytes, 64, ptr) }
}

/// Like `nodeshm_allocate` with an alignment (a power of two up to the page size).
///
/// # Safety
/// As `nodeshm_allocate`.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_allocate_aligned(
    a: *const NodeshmAllocator,
    name: *const c_char,
    bytes: u64,
    align: u64,
    ptr: *mut *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let (a, name) = unsafe { (handle(a, "allocator")?, string(name, "name")?) };
        if ptr.is_null() {
            return Err(null("ptr"));
        }
        let block = a.0.allocate_aligned(name, bytes, align)?;
        // SAFETY: forwarded contract.
        unsafe { put(ptr, block.as_ptr().cast(), "ptr") }
    })
}

/// Releases one reference to the block at `ptr`; `NODESHM_ENOTHELD` if this process holds none.
///
/// # Safety
/// `a` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_deallocate(
    a: *const NodeshmAllocator,
    ptr: *const c_void,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { handle(a, "allocator")? };
        if ptr.is_null() {
            return Err(null("ptr"));
        }
        a.0.arena().deallocate_ptr(ptr.cast())
    })
}

/// Block `name` if it exists (taking a reference): `*ptr` and `*size` get it, or NULL and 0.
///
/// # Safety
/// `a` is NULL or live; `name` is NULL or NUL-terminated; `ptr` writable; `size` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_find(
    a: *const NodeshmAllocator,
    name: *const c_char,
    ptr: *mut *mut c_void,
    size: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let (a, name) = unsafe { (handle(a, "allocator")?, string(name, "name")?) };
        if ptr.is_null() {
            return Err(null("ptr"));
        }
        let found = a.0.find(name)?;
        let (p, len) = found.map_or((std::ptr::null_mut(), 0), |b| (b.as_ptr().cast(), b.len()));
        // SAFETY: forwarded contract.
        unsafe {
            put(ptr, p, "ptr")?;
            if !size.is_null() {
                put(size, len, "size")?;
            }
        }
        Ok(())
    })
}

/// Bytes in use in this rank's arena.
///
/// # Safety
/// `a` is NULL or live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_actual_size(a: *const NodeshmAllocator, out: *mut u64) -> c_int {
    // SAFETY: forwarded contract.
    guard(|| unsafe { put(out, handle(a, "allocator")?.0.actual_size()?, "out") })
}

/// Gives the blocks of removed small names, kept for the next name of their size, back to
/// the heap of this rank's arena, merged with their neighbours (Umpire's `coalesce`).
///
/// # Safety
/// `a` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_coalesce(a: *const NodeshmAllocator) -> c_int {
    // SAFETY: forwarded contract.
    guard(|| unsafe { handle(a, "allocator")? }.0.coalesce())
}

/// Usage figures of this rank's arena.
///
/// # Safety
/// `a` is NULL or live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_stats(
    a: *const NodeshmAllocator,
    out: *mut NodeshmStats,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let s = unsafe { handle(a, "allocator")? }.0.stats()?;
        // SAFETY: forwarded contract.
        unsafe { put(out, s, "out") }
    })
}

/// The allocator's communicator as a Fortran handle (`MPI_Comm_f2c` gives the C one). Owned by
/// the allocator: do not free it; valid until the last handle is released.
///
/// # Safety
/// `a` is NULL or live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_allocator_comm(
    a: *const NodeshmAllocator,
    out: *mut c_int,
) -> c_int {
    guard(|| {
        crate::comm::mpi_running()?;
        // SAFETY: forwarded contract.
        let a = unsafe { handle(a, "allocator")? };
        // SAFETY: the communicator is valid while the allocator lives.
        let f = unsafe { mpi::ffi::RSMPI_Comm_c2f(a.0.communicator().as_raw()) };
        // SAFETY: forwarded contract.
        unsafe { put(out, f, "out") }
    })
}

/// Takes the allocator's user lock (robust, with the traits' lock timeout). `*owner_died`
/// (if not NULL) is set to 1 when the previous holder died holding it.
///
/// # Safety
/// `a` is NULL or live; `owner_died` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_lock(a: *const NodeshmAllocator, owner_died: *mut c_int) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { handle(a, "allocator")? };
        let lock = a.0.arena().lock_user(a.0.traits().lock_timeout)?;
        let died = lock.previous_owner_died();
        // C holds no Rust borrow: the lock stays held until nodeshm_unlock.
        lock.leak();
        if !owner_died.is_null() {
            // SAFETY: forwarded contract.
            unsafe { put(owner_died, c_int::from(died), "owner_died")? };
        }
        Ok(())
    })
}

/// Releases the user lock taken by `nodeshm_lock` on this thread.
///
/// # Safety
/// `a` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn nodeshm_unlock(a: *const NodeshmAllocator) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { handle(a, "allocator")? };
        // SAFETY: the C ABI never keeps a guard: a lock taken by nodeshm_lock was leaked, so
        // no guard of this thread can unlock it again.
        unsafe { a.0.arena().force_unlock_user() }
    })
}
