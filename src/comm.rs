//! MPI plumbing for the manager: owned communicators, splitting by node and scope, the job
//! token, and collective agreement on outcomes so that no rank returns before the others know
//! whether the step succeeded everywhere (the way to never hang on an error).

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use mpi::collective::SystemOperation;
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::error::{Error, Result, Wire};

static COLLECTIVES: AtomicU64 = AtomicU64::new(0);

/// Counts one collective call made by this module (reductions, broadcasts, splits, duplicates).
fn counted() {
    COLLECTIVES.fetch_add(1, Ordering::Relaxed);
}

/// How many collective MPI calls this process made through the library so far (every
/// reduction, broadcast, split and duplicate). The benchmark reports the difference around a
/// call, e.g. the collective rounds of one `make_resource`. Local.
pub fn collective_calls() -> u64 {
    COLLECTIVES.load(Ordering::Relaxed)
}

/// A communicator this library owns. Freed on drop, unless MPI is already finalized (freeing
/// then would abort the job), in which case the handle is simply forgotten.
pub struct OwnedComm(ManuallyDrop<SimpleCommunicator>);

impl OwnedComm {
    fn new(comm: SimpleCommunicator) -> Self {
        OwnedComm(ManuallyDrop::new(comm))
    }
}

impl Deref for OwnedComm {
    type Target = SimpleCommunicator;
    fn deref(&self) -> &SimpleCommunicator {
        &self.0
    }
}

impl Drop for OwnedComm {
    fn drop(&mut self) {
        if !mpi::environment::is_finalized() {
            // SAFETY: dropped exactly once, here; the field is never used again.
            unsafe { ManuallyDrop::drop(&mut self.0) }
        }
    }
}

impl std::fmt::Debug for OwnedComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnedComm(rank {} of {})", self.rank(), self.size())
    }
}

/// Fails with `MpiFinalized` unless MPI is initialised and not finalized: checked before any MPI
/// call made for another language (the C ABI, Python), so that a call after `MPI_Finalize` is an
/// error instead of an abort inside MPI.
pub fn mpi_running() -> Result<()> {
    if mpi::environment::is_finalized() {
        return Err(Error::MpiFinalized("finalized".into()));
    }
    if !mpi::environment::is_initialized() {
        return Err(Error::MpiFinalized("not initialised".into()));
    }
    Ok(())
}

/// A private duplicate of the communicator whose Fortran handle (`MPI_Comm_c2f`) is `comm_f`,
/// for bindings to other languages (C, Fortran, Python's `comm.py2f()`): handles of every MPI
/// cross as Fortran integers. Collective over that communicator.
///
/// Fails with `InvalidArgument` for `MPI_COMM_NULL`, a handle the MPI does not know (where it
/// lets us tell: Open MPI) and inter-communicators; with `MpiFinalized` outside MPI_Init..Finalize.
pub fn from_fortran(comm_f: i32) -> Result<SimpleCommunicator> {
    use mpi::ffi::MPI_Comm;
    use mpi::raw::FromRaw;
    mpi_running()?;
    // SAFETY: converting a handle value has no preconditions beyond MPI being initialised.
    let raw: MPI_Comm = unsafe { mpi::ffi::RSMPI_Comm_f2c(comm_f) };
    // SAFETY: an all-zero handle is never a valid communicator in any MPI (Open MPI's f2c returns
    // a null pointer for an index it does not know; MPICH's handles carry kind bits): `zeroed`
    // only builds a value of the handle type to compare with.
    let zero: MPI_Comm = unsafe { std::mem::zeroed() };
    // SAFETY: reading the MPI library's constant.
    if raw == zero || raw == unsafe { mpi::ffi::RSMPI_COMM_NULL } {
        return Err(Error::InvalidArgument(format!(
            "communicator {comm_f} is MPI_COMM_NULL or not a communicator"
        )));
    }
    let mut inter: std::ffi::c_int = 0;
    // SAFETY: `raw` is a communicator handle of the caller's; `inter` is writable.
    unsafe { mpi::ffi::MPI_Comm_test_inter(raw, &mut inter) };
    if inter != 0 {
        return Err(Error::InvalidArgument(format!(
            "communicator {comm_f} is an inter-communicator; pass an intra-communicator"
        )));
    }
    // rsmpi wraps only communicators it may own, so work on a private duplicate; the caller's
    // handle, MPI_COMM_WORLD included, is never touched.
    let mut dup = raw;
    // SAFETY: `raw` is a valid intra-communicator; `dup` is writable.
    let rc = unsafe { mpi::ffi::MPI_Comm_dup(raw, &mut dup) };
    if rc != 0 {
        return Err(Error::Mpi(format!(
            "MPI_Comm_dup of communicator {comm_f} failed with code {rc}"
        )));
    }
    // SAFETY: `dup` is a fresh user communicator that nothing else owns.
    Ok(unsafe { SimpleCommunicator::from_raw(dup) })
}

/// A private duplicate of `comm`. Collective over `comm`.
pub fn duplicate<C: Communicator>(comm: &C) -> OwnedComm {
    counted();
    OwnedComm::new(comm.duplicate())
}

/// The ranks of `comm` on this node (`MPI_COMM_TYPE_SHARED`). Collective over `comm`.
pub fn split_node(comm: &SimpleCommunicator) -> OwnedComm {
    counted();
    OwnedComm::new(comm.split_shared(comm.rank()))
}

/// The ranks of `comm` that pass the same `color`, ordered by rank. Collective over `comm`.
pub fn split_by(comm: &SimpleCommunicator, color: i32) -> Result<OwnedComm> {
    counted();
    comm.split_by_color_with_key(Color::with_value(color), comm.rank())
        .map(OwnedComm::new)
        .ok_or_else(|| {
            Error::Mpi(format!(
                "MPI_Comm_split with color {color} gave no communicator"
            ))
        })
}

/// A random 64-bit token chosen by rank 0 and known to all. Collective over `comm`.
pub fn job_token(comm: &SimpleCommunicator) -> u64 {
    let mut token = 0u64;
    if comm.rank() == 0 {
        let mut bytes = [0u8; 8];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut bytes);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        token = u64::from_ne_bytes(bytes) ^ now ^ ((std::process::id() as u64) << 40);
    }
    counted();
    comm.process_at_rank(0).broadcast_into(&mut token);
    token
}

/// Broadcasts a string from `root`. Collective over `comm`.
fn broadcast_string(comm: &SimpleCommunicator, root: i32, text: &str) -> String {
    let mut len = text.len() as u64;
    counted();
    comm.process_at_rank(root).broadcast_into(&mut len);
    let mut bytes = if comm.rank() == root {
        text.as_bytes().to_vec()
    } else {
        vec![0u8; len as usize]
    };
    if len > 0 {
        counted();
        comm.process_at_rank(root).broadcast_into(&mut bytes[..]);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Agrees on the outcome of a step every rank did locally. Collective over `comm`.
///
/// If every rank succeeded, returns each rank's own value. Otherwise every rank returns the
/// same [`Error::Collective`] carrying the error of the lowest failing rank, with its variant
/// and fields (the original on that rank, a copy on the others), and how many ranks failed;
/// successful values are dropped. One reduction when all went well.
pub fn agree<T>(comm: &SimpleCommunicator, local: Result<T>) -> Result<T> {
    match lowest_rank_where(comm, local.is_err()) {
        None => local,
        Some(first) => Err(spread(comm, first, local)),
    }
}

/// The lowest rank whose `flag` is set, if any, on every rank: one reduction. Collective over
/// `comm`.
fn lowest_rank_where(comm: &SimpleCommunicator, flag: bool) -> Option<i32> {
    let mine = if flag { comm.rank() } else { i32::MAX };
    let mut first = i32::MAX;
    counted();
    comm.all_reduce_into(&mine, &mut first, SystemOperation::min());
    (first != i32::MAX).then_some(first)
}

/// [`check_same`] and [`agree`] in one reduction: every rank passed the same `description`, and
/// every rank's `local` step succeeded. A mismatch is reported first (it explains any failure).
/// Collective over `comm`.
pub fn agree_same<T>(
    comm: &SimpleCommunicator,
    what: &str,
    description: &str,
    local: Result<T>,
) -> Result<T> {
    let hash = fingerprint(description);
    // max(!h) is !min(h), whether the MPI compares these words as unsigned or as signed (!x is
    // order-reversing both ways); the lowest failing rank r is the largest FAILED - r. FAILED
    // keeps that positive either way: MPICH's MAX on them compares as signed, where MAX - r
    // would lose to the 0 of the ranks that succeeded.
    const FAILED: u64 = 1 << 62;
    let failing = if local.is_err() {
        FAILED - comm.rank() as u64
    } else {
        0
    };
    let mut out = [0u64; 3];
    counted();
    comm.all_reduce_into(
        &[hash, !hash, failing][..],
        &mut out[..],
        SystemOperation::max(),
    );
    if out[0] != !out[1] {
        return Err(mismatch(comm, what, description, hash));
    }
    if out[2] == 0 {
        return local;
    }
    Err(spread(comm, (FAILED - out[2]) as i32, local))
}

/// The failure path of an agreement: every rank learns the error of rank `first` (the lowest
/// that failed) and how many failed. Collective over `comm`.
fn spread<T>(comm: &SimpleCommunicator, first: i32, local: Result<T>) -> Error {
    let rank = comm.rank();
    let failed_here = i32::from(local.is_err());
    let mut failed = 0i32;
    counted();
    comm.all_reduce_into(&failed_here, &mut failed, SystemOperation::sum());
    let wire = match &local {
        Err(e) if rank == first => Wire::of(e),
        _ => Wire::default(),
    };
    let mut count = wire.nums.len() as u64;
    counted();
    comm.process_at_rank(first).broadcast_into(&mut count);
    let mut nums = wire.nums.clone();
    nums.resize(count as usize, 0);
    if count > 0 {
        counted();
        comm.process_at_rank(first).broadcast_into(&mut nums[..]);
    }
    let joined = wire
        .strs
        .iter()
        .map(|s| s.replace('\0', "\u{fffd}"))
        .collect::<Vec<_>>()
        .join("\0");
    let joined = broadcast_string(comm, first, &joined);
    let source = match local {
        Err(e) if rank == first => e,
        _ => Wire {
            nums,
            strs: joined.split('\0').map(str::to_string).collect(),
        }
        .decode(),
    };
    Error::Collective {
        rank: first,
        failed_ranks: failed,
        source: Box::new(source),
    }
}

/// Rank `root`'s outcome (`ok`) and the fingerprint of its arguments, on every rank, in one
/// broadcast. Collective over `comm`.
pub fn broadcast_outcome(comm: &SimpleCommunicator, root: i32, ok: bool, args: u64) -> (bool, u64) {
    let mut value = [u64::from(ok), args];
    counted();
    comm.process_at_rank(root).broadcast_into(&mut value[..]);
    (value[0] != 0, value[1])
}

/// The fingerprint of a call's arguments that [`agree_same`] and [`check_same`] compare.
pub fn fingerprint(description: &str) -> u64 {
    fnv(description.as_bytes())
}

/// Checks that every rank passed the same `description` (of a call's arguments); if not, every
/// rank gets the same error naming the first rank that differs from rank 0 and both
/// descriptions. Collective over `comm`.
pub fn check_same(comm: &SimpleCommunicator, what: &str, description: &str) -> Result<()> {
    agree_same(comm, what, description, Ok(()))
}

/// The error when ranks passed different arguments: names the first rank that differs from rank
/// 0 and both descriptions. Collective over `comm` (every rank takes this path together).
fn mismatch(comm: &SimpleCommunicator, what: &str, description: &str, hash: u64) -> Error {
    let mut root_hash = hash;
    counted();
    comm.process_at_rank(0).broadcast_into(&mut root_hash);
    // The hashes differ, so some rank's differs from rank 0's; the 0 keeps a reduction that
    // lied from sending the broadcast below to a rank that does not exist.
    let first = lowest_rank_where(comm, hash != root_hash).unwrap_or(0);
    let theirs = broadcast_string(comm, first, description);
    let root = broadcast_string(comm, 0, description);
    Error::InvalidArgument(format!(
        "{what} is collective and needs the same arguments on every rank, but rank {first} passed \
         [{theirs}] while rank 0 passed [{root}]"
    ))
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
