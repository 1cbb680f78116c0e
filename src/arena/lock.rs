//! The arena's two locks (the metadata lock and the user lock): process-shared, robust pthread
//! mutexes living inside the arena, locked with a timeout, each with a word recording its
//! holder's pid; and [`LockGuard`], the one guard type for both, in the manner of lock_api.
//!
//! A process that dies holding a lock does not block the others: the kernel marks the mutex, the
//! next locker gets `EOWNERDEAD`, repairs what the dead owner was doing (the caller's job, told
//! through [`LockGuard::previous_owner_died`]) and marks the mutex consistent.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::libc;

use super::layout as l;
use super::region::Region;
use super::undo::Tx;
use super::{directory, recycle};
use super::{Arena, UserLock};
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

/// Byte offset of glibc's `__kind` in a `pthread_mutex_t` on 64-bit Linux: the mutex's type
/// and protocol, which glibc trusts. Damaged into a priority-protect or priority-inherit kind,
/// a lock call aborts the process on one of glibc's assertions instead of failing.
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
const KIND_OFFSET: usize = 16;

/// The kind word of a mutex made by [`init`], read from a private one made the same way (so
/// that what glibc writes there is never hard-coded here); `None` if that failed.
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
fn expected_kind() -> Option<u32> {
    static KIND: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *KIND.get_or_init(|| {
        let mut m = std::mem::MaybeUninit::<libc::pthread_mutex_t>::zeroed();
        // SAFETY: `m` is private, writable, aligned memory for one mutex that nothing uses.
        unsafe { init(m.as_mut_ptr()) }.ok()?;
        // SAFETY: `init` initialised the mutex, whose 40 bytes include the 4 at KIND_OFFSET
        // (4-aligned); a plain read of private memory; then the mutex is destroyed, unused.
        unsafe {
            let kind = std::ptr::read(m.as_ptr().cast::<u8>().add(KIND_OFFSET).cast::<u32>());
            libc::pthread_mutex_destroy(m.as_mut_ptr());
            Some(kind)
        }
    })
}

/// Refuses a mutex whose kind word is not the one [`init`] writes (see [`KIND_OFFSET`]).
///
/// # Safety
/// `m` must point to at least `size_of::<pthread_mutex_t>()` bytes of a live shared mapping,
/// 8-aligned.
#[inline(always)]
unsafe fn check_kind(m: *mut libc::pthread_mutex_t, what: &str) -> Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    {
        // SAFETY: per the contract the 4 bytes at KIND_OFFSET lie in the mapping, 4-aligned;
        // other processes may write them, so they are read atomically.
        let kind = unsafe { &*m.cast::<u8>().add(KIND_OFFSET).cast::<AtomicU32>() }
            .load(Ordering::Relaxed);
        if let Some(expected) = expected_kind() {
            if kind != expected {
                return Err(Error::Corrupted(format!(
                    "the {what} is damaged: its mutex's kind word reads {kind:#x}, where a \
                     robust process-shared mutex has {expected:#x}; recreate the arena"
                )));
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64")))]
    let _ = (m, what);
    Ok(())
}

/// Locks `m`, waiting at most `timeout`. While it spins (the first few microseconds of the
/// wait), `give_up` is asked after every try that found the lock held: when it returns a
/// value, the wait ends without the lock and that value comes back as `Ok(Err(value))`.
/// Waiters that can never give up pass [`never()`].
///
/// # Safety
/// `m` must point to a mutex initialised by [`init`] inside a live shared mapping.
pub(crate) unsafe fn lock<G>(
    m: *mut libc::pthread_mutex_t,
    timeout: Duration,
    what: &str,
    holder: &AtomicU32,
    mut give_up: impl FnMut() -> Option<G>,
) -> Result<std::result::Result<Acquired, G>> {
    // SAFETY: `m` is a mutex inside a live shared mapping per the contract.
    unsafe { check_kind(m, what)? };
    // Critical sections under this lock last a few hundred nanoseconds, so a waiter first spins
    // for a few microseconds: sleeping in the kernel would make every hand-over cost a futex
    // wake system call. No clock read on this path.
    for round in 0..SPIN_ROUNDS {
        // A trylock is a compare-and-swap, which takes the lock's line from the holder even when
        // it fails, and the holder needs that line back to unlock: while the holder word says
        // the lock is held, only read it. Every eighth round tries anyway, as the word is only
        // a hint (a holder that died leaves it set).
        if round % 8 == 7 || holder.load(Ordering::Relaxed) == 0 {
            // SAFETY: `m` is a valid initialised mutex per the contract.
            match unsafe { libc::pthread_mutex_trylock(m) } {
                0 => return Ok(Ok(Acquired::Clean)),
                libc::EOWNERDEAD => return Ok(Ok(Acquired::OwnerDied)),
                libc::ENOTRECOVERABLE => return Err(unrecoverable(what)),
                _ => {}
            }
        }
        if let Some(reason) = give_up() {
            return Ok(Err(reason));
        }
        back_off(round);
    }
    let deadline = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map_err(|e| Error::io("reading the clock", e))?;
    let deadline = deadline + nix::sys::time::TimeSpec::from_duration(timeout);
    // SAFETY: `m` is a valid initialised mutex per the contract; the timespec is a valid value.
    let rc = unsafe { libc::pthread_mutex_timedlock(m, deadline.as_ref()) };
    match rc {
        0 => Ok(Ok(Acquired::Clean)),
        libc::EOWNERDEAD => Ok(Ok(Acquired::OwnerDied)),
        libc::ETIMEDOUT => Err(Error::Timeout {
            what: format!("waiting for the {what}"),
            waited: timeout,
            hint: format!(
                "it is held by pid {}; that process is stuck or very slow (check it with \
                 `nodeshm stat`, or raise the lock timeout)",
                holder.load(Ordering::Acquire)
            ),
        }),
        libc::ENOTRECOVERABLE => Err(unrecoverable(what)),
        rc => Err(Error::io(
            format!("locking the {what}"),
            std::io::Error::from_raw_os_error(rc),
        )),
    }
}

/// Rounds of [`back_off`] a waiter spends before it sleeps in the kernel (a few microseconds
/// of spinning, then yields).
const SPIN_ROUNDS: u32 = 64;

/// One round of waiting for a lock holder: pauses that double every 8 rounds, and from round
/// 48 a yield, so that a holder descheduled on the same core gets to run.
fn back_off(round: u32) {
    if round < 48 {
        (0..(1u32 << (round / 8))).for_each(|_| std::hint::spin_loop());
    } else {
        std::thread::yield_now();
    }
}

fn unrecoverable(what: &str) -> Error {
    Error::Corrupted(format!(
        "the {what} is unrecoverable (a previous owner died and the repair did not finish); \
         recreate the arena"
    ))
}

/// A held arena lock; released when dropped. Not `Send`: a robust mutex belongs to the thread
/// that locked it (unlocking from another thread fails, and would leave it locked), as
/// lock_api's `GuardNoSend`.
///
/// ```compile_fail
/// fn needs_send<T: Send>() {}
/// needs_send::<nodeshm::arena::UserLock<'static>>();
/// ```
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    mutex: *mut libc::pthread_mutex_t,
    holder: &'a AtomicU32,
    owner_died: bool,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("previous_owner_died", &self.owner_died)
            .finish_non_exhaustive()
    }
}

impl LockGuard<'_> {
    /// True if the previous holder died holding the lock: the data it guards may be half-written.
    pub fn previous_owner_died(&self) -> bool {
        self.owner_died
    }

    /// Keeps the lock held and forgets the guard (for callers that cannot hold a Rust borrow,
    /// like the C ABI); release it later, on this thread, with the arena's `force_unlock_user`.
    pub fn leak(self) {
        std::mem::forget(self);
    }

    /// Marks the mutex consistent after the caller repaired what a dead owner left.
    pub(crate) fn make_consistent(&self) {
        // SAFETY: this guard holds the mutex (after EOWNERDEAD when this is called).
        unsafe { libc::pthread_mutex_consistent(self.mutex) };
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.holder.store(0, Ordering::Release);
        // SAFETY: the guard exists only while this thread holds the mutex (it is not Send).
        let rc = unsafe { libc::pthread_mutex_unlock(self.mutex) };
        debug_assert_eq!(rc, 0, "unlocking a held robust mutex failed");
    }
}

/// Locks `m`, waiting at most `timeout`, and records `pid` in `holder` (told to those who time
/// out waiting). `what` names the lock in errors; `give_up` as for [`lock`].
///
/// # Safety
/// `m` must point to a mutex initialised by [`init`] inside a live shared mapping that outlives
/// `'a` (as `holder` does).
#[inline(always)]
pub(crate) unsafe fn acquire<'a, G>(
    m: *mut libc::pthread_mutex_t,
    holder: &'a AtomicU32,
    pid: u32,
    timeout: Duration,
    what: &str,
    give_up: impl FnMut() -> Option<G>,
) -> Result<std::result::Result<LockGuard<'a>, G>> {
    // SAFETY: forwarded contract.
    let how = match unsafe { lock(m, timeout, what, holder, give_up)? } {
        Ok(how) => how,
        Err(reason) => return Ok(Err(reason)),
    };
    holder.store(pid, Ordering::Release);
    Ok(Ok(LockGuard {
        mutex: m,
        holder,
        owner_died: how == Acquired::OwnerDied,
        _not_send: PhantomData,
    }))
}

/// The `give_up` of a waiter that never gives up.
fn never() -> Option<Infallible> {
    None
}

/// What a wait that cannot give up returns.
fn no_give_up<T>(waited: std::result::Result<T, Infallible>) -> T {
    match waited {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// Unlocks `m` held by this thread without a guard (one that was leaked); `NotHeld` when this
/// thread does not hold it (robust mutexes check their owner), and nothing changes then.
///
/// # Safety
/// `m` must point to an initialised mutex in a live mapping, and no guard of this thread may
/// still refer to it (the guard would unlock it a second time).
pub(crate) unsafe fn force_unlock(
    m: *mut libc::pthread_mutex_t,
    holder: &AtomicU32,
    what: &str,
) -> Result<()> {
    let previous = holder.swap(0, Ordering::AcqRel);
    // SAFETY: per the contract; pthread returns EPERM when this thread is not the owner.
    match unsafe { libc::pthread_mutex_unlock(m) } {
        0 => Ok(()),
        rc => {
            holder.store(previous, Ordering::Release);
            Err(Error::NotHeld {
                what: format!("the {what}"),
                detail: format!(
                    "this thread does not hold it (unlock only after a successful lock, on the \
                     same thread; error {rc})"
                ),
            })
        }
    }
}

/// Repairs what a process that died holding the arena lock left (the caller holds the lock
/// now): rolls its update back, recounts the figures updates keep outside the undo log (it may
/// have died after its commit point but before storing them), and makes every directory version
/// even again. Returns the words rolled back; `Corrupted` when the log or the directory fails
/// its checks.
pub(crate) fn recover(r: &Region) -> Result<u64> {
    let rolled_back = r.roll_back().and_then(|words| {
        directory::recount(r)?;
        recycle::recount(r)?;
        Ok(words)
    });
    r.settle_version();
    rolled_back
}

impl Arena {
    pub(super) fn mutex(&self, off: u64) -> *mut libc::pthread_mutex_t {
        assert!(off + l::MUTEX_SLOT as u64 <= l::HEADER_SIZE);
        // SAFETY: a header field: inside every mapping (see Region::new).
        unsafe { self.region.base().as_ptr().add(off as usize).cast() }
    }

    /// Runs `update` under the arena lock as one transaction: either all of it happens or none.
    pub(super) fn locked<T>(&self, update: impl FnOnce(&mut Tx) -> Result<T>) -> Result<T> {
        self.locked_unless(never, update).map(no_give_up)
    }

    /// As [`locked`](Self::locked), but while another process holds the lock and this one
    /// spins for it, `give_up` is asked after each try: when it returns a value, the wait ends,
    /// `update` does not run and the value comes back as `Ok(Err(value))`. For a lock-free
    /// reader that went for the lock because a name was missing, and that sees meanwhile that
    /// the holder was creating it: it can take its reference without the lock.
    pub(super) fn locked_unless<T, G>(
        &self,
        give_up: impl FnMut() -> Option<G>,
        update: impl FnOnce(&mut Tx) -> Result<T>,
    ) -> Result<std::result::Result<T, G>> {
        let r = &self.region;
        // SAFETY: the arena mutex was initialised before the arena became ready; the mapping
        // (and so the holder word) outlives this call.
        let guard = unsafe {
            acquire(
                self.mutex(l::LOCK),
                r.word32(l::LOCK_HOLDER),
                self.pid,
                self.lock_timeout,
                "arena lock",
                give_up,
            )?
        };
        let guard = match guard {
            Ok(guard) => guard,
            Err(reason) => return Ok(Err(reason)),
        };
        let damaged = || {
            Error::Corrupted(
                "a process that died holding the arena lock left an undo log that fails its \
                 checks, so the heap and directory cannot be trusted; recreate the arena"
                    .into(),
            )
        };
        if guard.previous_owner_died() {
            let recovered = recover(r);
            // The lock itself is made usable again either way; a log or a directory that fails
            // its checks is damage, recorded so that every later locker gets the same error
            // instead of working on bad metadata.
            if recovered.is_err() {
                r.word32(l::DAMAGED)
                    .store(1, std::sync::atomic::Ordering::Release);
            } else {
                r.store(l::RECOVERIES, r.header(l::RECOVERIES).wrapping_add(1))?;
            }
            guard.make_consistent();
            recovered?;
        }
        if r.word32(l::DAMAGED)
            .load(std::sync::atomic::Ordering::Acquire)
            != 0
        {
            return Err(damaged());
        }
        let attacher = self.slot.map_or(u64::from(self.pid), l::attacher_index);
        let mut tx = Tx::begin(&self.region).by(attacher);
        let value = update(&mut tx)?;
        tx.commit();
        drop(guard);
        Ok(Ok(value))
    }

    /// Takes the arena's user lock (a second robust mutex, separate from the metadata lock),
    /// waiting at most `timeout`. Use it to guard your own data in the arena. The guard stays
    /// on this thread; `previous_owner_died()` tells when its last holder died holding it.
    ///
    /// Fails with `Timeout` (naming the holder's pid) when it is not free in time.
    pub fn lock_user(&self, timeout: Duration) -> Result<UserLock<'_>> {
        // SAFETY: the user mutex was initialised before the arena became ready; the guard
        // borrows `self`, so the mapping outlives it.
        let guard = unsafe {
            acquire(
                self.mutex(l::USER_LOCK),
                self.region.word32(l::USER_LOCK_HOLDER),
                self.pid,
                timeout,
                "user lock",
                never,
            )
            .map(no_give_up)?
        };
        if guard.previous_owner_died() {
            // The user is told through the guard; the mutex itself is usable again.
            guard.make_consistent();
        }
        Ok(guard)
    }

    /// Releases the user lock held by this thread through a guard that was
    /// [`leak`](UserLock::leak)ed (the C ABI's unlock). `NotHeld` when this thread does not
    /// hold it; nothing changes then.
    ///
    /// # Safety
    /// No guard of this thread may still hold the user lock (it would unlock it again on drop).
    pub unsafe fn force_unlock_user(&self) -> Result<()> {
        // SAFETY: forwarded contract; the mutex is initialised and mapped.
        unsafe {
            force_unlock(
                self.mutex(l::USER_LOCK),
                self.region.word32(l::USER_LOCK_HOLDER),
                "user lock",
            )
        }
    }
}
