//! What works without the arena lock: the lookup validated by its group's version (a
//! seqlock reader), waiting for an update of a chain to end, and taking and dropping
//! references by compare-and-swap on a slot's state word.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::extent::{extent_hint, Extent, Head};
use super::slot::{names_equal, peek_slot, state, Slot, State, REFS};
use crate::arena::layout as l;
use crate::arena::region::{Mem, Region};
use crate::error::{Error, Result};

/// What a lock-free lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fast {
    /// A live entry named so (checked again by the reference's compare-and-swap), as read.
    Hit(Slot),
    /// No such name, and no update of its chain ran meanwhile: `version` is what the chain's
    /// group version read and `extent` the directory's extent (see [`still_missing`]).
    Miss { version: u64, extent: u64 },
    /// An update ran meanwhile, or something looked wrong: ask again under the lock (which
    /// also reports real damage).
    Busy,
}

/// Looks `name` up without the lock. A hit is a slot that was live, named so, in a directory
/// no update touched during the walk (so the slot belongs to a committed chunk: memory that
/// stays a slot); the caller then takes its reference with [`take_reference`], whose
/// compare-and-swap fails if the slot changed generation or lost its last reference since.
#[inline(always)]
pub(crate) fn lookup_fast(r: &Region, name: &[u8], h: u64) -> Fast {
    let g = r.geometry();
    // The extent first: a split that ends before the version is read is then seen by the
    // second read of the extent (the split writes it before making its versions even).
    let extent = extent_hint(r);
    let (group, bucket) = Extent(extent).chain_of(g, h);
    let version = r.version(group);
    let before = version.load(Ordering::Acquire);
    if before & 1 == 1 {
        return Fast::Busy;
    }
    // Ok(None) with `dead`: an entry of this name without references, or one whose update a
    // dead process committed but did not publish: only the lock can tell what to do with it.
    let mut dead = false;
    let found = walk_chain(r, bucket, name, h, &mut dead);
    // The walk's loads may not move past the second read of the version (a seqlock reader).
    std::sync::atomic::fence(Ordering::Acquire);
    if version.load(Ordering::Acquire) != before || extent_hint(r) != extent {
        return Fast::Busy;
    }
    match found {
        Some(Some(slot)) => Fast::Hit(slot),
        Some(None) if !dead => Fast::Miss {
            version: before,
            extent,
        },
        _ => Fast::Busy,
    }
}

/// The walk of [`lookup_fast`]: the live slot named `name` on the chain at `bucket`
/// (`Some(None)`: none, `dead` set if one without references was met). A plain bounded walk,
/// no cycle detection: a chain longer than [`FAST_STEPS`] (a cycle, or names far beyond the
/// directory's size) is left to the lock, whose walk reports it, as is a link that cannot be
/// read (`None`). A function of its own rather than a closure, so that it is inlined and its
/// slot stays out of memory.
#[inline(always)]
fn walk_chain(
    r: &Region,
    bucket: u64,
    name: &[u8],
    h: u64,
    dead: &mut bool,
) -> Option<Option<Slot>> {
    let [head] = r.peek::<1>(bucket)?;
    let head = Head(head);
    if !head.may_hold(h) {
        return Some(None);
    }
    let mut next = head.first();
    for _ in 0..FAST_STEPS {
        if next == 0 {
            return Some(None);
        }
        let slot = peek_slot(r, next)?;
        if slot.hash() == h && names_equal(|at| r.peek::<1>(at).map(|[w]| w), &slot, name)? {
            if slot.state().live() {
                return Some(Some(slot));
            }
            *dead = true;
        }
        next = slot.next();
    }
    None
}

/// Links a lock-free lookup follows before it leaves the chain to the lock: far more than a
/// chain holds with a chain per name.
const FAST_STEPS: u32 = 64;

/// After a [`Fast::Busy`]: waits for the update of the chain of `h` to end (a bounded spin),
/// so that the lookup can be tried again without the lock. False when it did not end within
/// [`WAIT_FOR_CHAIN`] (the caller then takes the lock, which waits properly).
///
/// The group's version is read at once, then only every [`LOOK_EVERY`]. Each read pulls the
/// group's line away from the process that is updating the chain (most often creating the
/// very name this one wants), which then waits to get it back for its next write. Looking
/// after every pause (25 ns here) kept the ranks in step, each slowing the other's creation:
/// with every process on the same names, `same_names` gave 250-270 ns a name with 2
/// processes and 190-215 with 4, against 190-195 and 160-180 when looking every 2 us
/// (medians of 6-8 alternated runs; README, Performance). A waiter that looks rarely lets the
/// creator finish this name and make the next ones undisturbed, then finds them made.
pub(crate) fn wait_for_chain(r: &Region, h: u64) -> bool {
    let version = r.version(Extent(extent_hint(r)).group_of(r.geometry(), h));
    if version.load(Ordering::Acquire) & 1 == 0 {
        return true;
    }
    let start = Instant::now();
    let mut look_at = LOOK_EVERY;
    // The clock bounds the wait; the count of pauses bounds it too, should the clock not
    // move (a pause takes from a few to a few tens of nanoseconds). Reading the clock touches
    // no shared line.
    for _ in 0..MAX_PAUSES {
        std::hint::spin_loop();
        let waited = start.elapsed();
        if waited < look_at {
            continue;
        }
        if version.load(Ordering::Acquire) & 1 == 0 {
            return true;
        }
        if waited >= WAIT_FOR_CHAIN {
            return false;
        }
        look_at = waited + LOOK_EVERY;
    }
    false
}

/// How often [`wait_for_chain`] looks at the version it waits on: longer than an update of a
/// chain (150-300 ns when it creates a name), so that the updater runs ahead. Every wait lasts
/// at least this long, and the benchmark's same-names p99 shows it: 1 us cut the p99s by a
/// quarter to a third (2 ranks, slow mode: 2.9 us to 2.0; 4 ranks at 100,000 names: 2.5 to
/// 1.6), but gave `same_names` medians of 190 ns against 165-171 in the fast mode, nearer the
/// 200 ns target (docs/performance-notes.md).
const LOOK_EVERY: Duration = Duration::from_micros(2);

/// Pauses [`wait_for_chain`] makes at most, whatever the clock says: 100 us at 1 ns a pause,
/// 2.5 ms at this CPU's 25 ns.
const MAX_PAUSES: u32 = 100_000;

/// How long [`wait_for_chain`] waits before it leaves the wait to the lock (an update that
/// takes longer is rare: a split of a long chain, or a descheduled updater).
pub(crate) const WAIT_FOR_CHAIN: Duration = Duration::from_micros(20);

/// Whether the miss that [`lookup_fast`] reported with `version` and `extent` still holds (no
/// split since, and no update changed a chain of that group; a recovery moves every odd
/// version). Under the lock, true means the name can be inserted without walking its chain
/// again; without it (a waiter for the lock), false means the name may have appeared.
pub(crate) fn still_missing(r: &Region, h: u64, version: u64, extent: u64) -> bool {
    extent_hint(r) == extent
        && r.version(Extent(extent).group_of(r.geometry(), h))
            .load(Ordering::Acquire)
            == version
}

/// Adds one reference to entry `e` if its state is still `seen` (same generation, live):
/// `Ok(false)` when it changed (the caller looks again). Lock-free: a compare-and-swap that
/// never revives an entry without references.
#[inline(always)]
pub(crate) fn take_reference(r: &Region, e: u64, seen: State) -> Result<bool> {
    if !seen.live() {
        return Ok(false);
    }
    if seen.refs() == REFS {
        return Err(too_many_references(e));
    }
    let word = r.heap_word(e + l::E_STATE)?;
    Ok(word
        .compare_exchange(seen.0, seen.0 + 1, Ordering::AcqRel, Ordering::Acquire)
        .is_ok())
}

#[cold]
#[inline(never)]
fn too_many_references(e: u64) -> Error {
    Error::InvalidArgument(format!(
        "the block at entry {e} has {REFS} references already; release some first"
    ))
}

/// Takes a reference to `e` whatever its reference count is now (under the lock, after
/// [`lookup_locked`](super::lookup_locked) found it live): `Ok(None)` if its last reference went meanwhile.
pub(crate) fn take_reference_now(r: &Region, e: u64) -> Result<Option<u32>> {
    // Each failed swap means another process changed the count: bounded by a large number of
    // such races, so that damage that flips the word forever ends in an error.
    for _ in 0..1_000_000 {
        let s = state(r, e)?;
        if s.refs() == 0 {
            return Ok(None);
        }
        // Under the lock every entry in a chain is committed and `lookup_locked` published it,
        // so the state is live here unless its count just reached zero.
        if take_reference(r, e, s)? {
            return Ok(Some(s.generation()));
        }
    }
    Err(Error::Corrupted(format!(
        "the reference count of entry {e} keeps changing"
    )))
}

/// Drops one reference of generation `generation` from `e`, lock-free. Returns true when it
/// was the last one: the caller then removes the entry under the lock ([`remove_dead`](super::remove_dead)).
/// `NotHeld`-like damage (another generation, no reference) is `Corrupted`.
pub(crate) fn drop_reference(r: &Region, e: u64, generation: u32) -> Result<bool> {
    let word = r.heap_word(e + l::E_STATE)?;
    for _ in 0..1_000_000 {
        let s = State(word.load(Ordering::Acquire));
        if s.generation() != generation || s.refs() == 0 {
            return Err(Error::Corrupted(format!(
                "the entry at {e} changed while this process held a reference to it \
                 (generation {} with {} references, expected generation {generation})",
                s.generation(),
                s.refs()
            )));
        }
        if word
            .compare_exchange(s.0, s.0 - 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Ok(s.refs() == 1);
        }
    }
    Err(Error::Corrupted(format!(
        "the reference count of entry {e} keeps changing"
    )))
}
