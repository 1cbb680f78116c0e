//! A process-shared, robust pthread mutex living inside the arena, locked with a timeout.
//!
//! A process that dies holding it does not block the others: the kernel marks the mutex, the next
//! locker gets `EOWNERDEAD`, repairs what the dead owner was doing (the caller's job, told through
//! [`Acquired::OwnerDied`]) and marks the mutex consistent.

use std::time::Duration;

use nix::libc;

use crate::error::{Error, Result};

/// How a lock was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    Clean,
    /// The previous owner died holding the lock; the protected data may be half-updated.
    OwnerDied,
}

/// Initialises a robust, process-shared mutex in place.
///
/// # Safety
/// `m` must point to writable memory of at least `size_of::<pthread_mutex_t>()` bytes, suitably
/// aligned, that no process uses as a mutex yet.
pub(crate) unsafe fn init(m: *mut libc::pthread_mutex_t) -> Result<()> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    let check = |rc: libc::c_int, what: &str| {
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::io(
                format!("initialising the arena lock ({what})"),
                std::io::Error::from_raw_os_error(rc),
            ))
        }
    };
    // SAFETY: attr is initialised by pthread_mutexattr_init before any other use and destroyed
    // at the end; `m` is valid per this function's contract.
    unsafe {
        check(libc::pthread_mutexattr_init(attr.as_mut_ptr()), "attr")?;
        let a = attr.as_mut_ptr();
        let result = check(
            libc::pthread_mutexattr_setpshared(a, libc::PTHREAD_PROCESS_SHARED),
            "pshared",
        )
        .and_then(|_| {
            check(
                libc::pthread_mutexattr_setrobust(a, libc::PTHREAD_MUTEX_ROBUST),
                "robust",
            )
        })
        .and_then(|_| check(libc::pthread_mutex_init(m, a), "init"));
        libc::pthread_mutexattr_destroy(a);
        result
    }
}

/// Locks `m`, waiting at most `timeout`.
///
/// # Safety
/// `m` must point to a mutex initialised by [`init`] inside a live shared mapping.
pub(crate) unsafe fn lock(
    m: *mut libc::pthread_mutex_t,
    timeout: Duration,
    what: &str,
    holder: impl FnOnce() -> u32,
) -> Result<Acquired> {
    // Critical sections under this lock last a few hundred nanoseconds, so a waiter first spins
    // on trylock for a few microseconds: sleeping in the kernel would make every hand-over cost
    // a futex wake system call. No clock read on this path.
    for round in 0..64u32 {
        // SAFETY: `m` is a valid initialised mutex per the contract.
        match unsafe { libc::pthread_mutex_trylock(m) } {
            0 => return Ok(Acquired::Clean),
            libc::EOWNERDEAD => return Ok(Acquired::OwnerDied),
            libc::ENOTRECOVERABLE => return Err(unrecoverable(what)),
            _ if round < 48 => (0..(1u32 << (round / 8))).for_each(|_| std::hint::spin_loop()),
            _ => std::thread::yield_now(),
        }
    }
    let deadline = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map_err(|e| Error::io("reading the clock", e))?;
    let deadline = deadline + nix::sys::time::TimeSpec::from_duration(timeout);
    // SAFETY: `m` is a valid initialised mutex per the contract; the timespec is a valid value.
    let rc = unsafe { libc::pthread_mutex_timedlock(m, deadline.as_ref()) };
    match rc {
        0 => Ok(Acquired::Clean),
        libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
        libc::ETIMEDOUT => Err(Error::Timeout {
            what: format!("waiting for the {what}"),
            waited: timeout,
            hint: format!(
                "it is held by pid {}; that process is stuck or very slow (check it with \
                 `nodeshm stat`, or raise the lock timeout)",
                holder()
            ),
        }),
        libc::ENOTRECOVERABLE => Err(unrecoverable(what)),
        rc => Err(Error::io(
            format!("locking the {what}"),
            std::io::Error::from_raw_os_error(rc),
        )),
    }
}

fn unrecoverable(what: &str) -> Error {
    Error::Corrupted(format!(
        "the {what} is unrecoverable (a previous owner died and the repair did not finish); \
         recreate the arena"
    ))
}

/// Marks a mutex consistent after its dead owner's damage was repaired.
///
/// # Safety
/// `m` must be a robust mutex the caller holds after an `EOWNERDEAD`.
pub(crate) unsafe fn make_consistent(m: *mut libc::pthread_mutex_t) {
    // SAFETY: per the contract the caller owns the mutex in the inconsistent state.
    unsafe { libc::pthread_mutex_consistent(m) };
}

/// # Safety
/// `m` must be a mutex the calling thread holds.
pub(crate) unsafe fn unlock(m: *mut libc::pthread_mutex_t) {
    // SAFETY: per the contract the calling thread owns `m`.
    unsafe { libc::pthread_mutex_unlock(m) };
}
