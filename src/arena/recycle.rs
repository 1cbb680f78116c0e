//! Parked blocks: when a small named block is removed, its directory slot keeps its heap block
//! and waits on a list of its size class for the next name of that size. Taking a parked pair
//! back logs 4 words where carving a new one from the heap logs about 20, and removing a name
//! parks it with 3 instead of the ~20 of freeing and merging — the undo log is most of a named
//! allocation's cost.
//!
//! Parked blocks stay "in use" for the heap (its `used` counts them); [`Stats`] reports them as
//! free. They are given back to the heap (and merged with their neighbours) when an allocation
//! does not fit otherwise, and by [`Arena::coalesce`].
//!
//! A parked slot has no references and is on no chain, so lock-free readers holding its offset
//! from before leave it alone (as they do a free slot); its `next` word links the list and its
//! `block` word names its block, both written through the undo log, so that a rollback leaves
//! every list well formed.
//!
//! [`Stats`]: crate::arena::Stats
//! [`Arena::coalesce`]: crate::arena::Arena::coalesce

use super::directory::{self, Slot};
use super::heap::{self, BLOCK_HEADER};
use super::layout::{self as l, PARK_CLASSES};
use super::region::{Mem, Region};
use super::undo::{Counter, Tx};
use crate::error::{Error, Result};

/// The class of a block with `payload` bytes (a multiple of 16), if it is small enough.
#[inline]
fn class_of(payload: u64) -> Option<usize> {
    let class = (payload / l::ALIGN).checked_sub(1)? as usize;
    (payload % l::ALIGN == 0 && class < PARK_CLASSES).then_some(class)
}

#[inline]
fn head(class: usize) -> u64 {
    l::PARKED + class as u64 * 8
}

/// Parks `slot` (already unlinked from its chain, without references) with its block. False
/// when the block is too large to park: the caller frees both then.
pub(crate) fn park(tx: &mut Tx, slot: &Slot) -> Result<bool> {
    let (r, e) = (tx.region(), slot.at);
    let payload = heap::payload_size(r, slot.block())?;
    let Some(class) = class_of(payload) else {
        return Ok(false);
    };
    tx.set(e + l::E_NEXT, tx.get(head(class))?)?;
    tx.set(head(class), e)?;
    tx.count(Counter::ParkedBytes, payload + BLOCK_HEADER);
    Ok(true)
}

/// A parked slot whose block has exactly `payload` bytes, taken off its list: `(slot, block)`.
/// The block's bytes are whatever its last name left there.
pub(crate) fn take(tx: &mut Tx, payload: u64) -> Result<Option<(u64, u64)>> {
    match class_of(payload) {
        Some(class) => pop(tx, class),
        None => Ok(None),
    }
}

/// Takes the first slot off the list of `class`, checked: `(slot, block)`.
#[inline(always)]
fn pop(tx: &mut Tx, class: usize) -> Result<Option<(u64, u64)>> {
    let r = tx.region();
    let e = tx.get(head(class))?;
    if e == 0 {
        return Ok(None);
    }
    let (slot, size) = check_parked(r, e, class)?;
    tx.set(head(class), slot.next())?;
    tx.count(Counter::ParkedBytes, (size + BLOCK_HEADER).wrapping_neg());
    prefetch_next(r, slot.next(), size);
    Ok(Some((e, slot.block())))
}

/// Starts bringing the parked pairs that the next takes of this list will pop: the block of
/// `next` (the new head) and the slot after it. Parked pairs lie wherever their names were
/// removed, in any order, so each take would otherwise wait for a cache miss on its slot, then
/// one on its block (one process making 20,000 names from 80,000 pairs parked in random order:
/// 430-460 ns a name without this, 180-230 with it, 150 when they were parked in order;
/// `same_names --scatter`). `next`'s slot line was
/// brought by the take before, so reading its words here rarely waits. Only hints: nothing
/// read here is trusted, and the next take checks its pair as ever.
#[inline]
fn prefetch_next(r: &Region, next: u64, payload: u64) {
    if next == 0 {
        return;
    }
    let Some(words) = r.peek::<{ (l::ENTRY_SIZE / 8) as usize }>(next) else {
        return;
    };
    let (after, block) = (
        words[(l::E_NEXT / 8) as usize],
        words[(l::E_BLOCK / 8) as usize],
    );
    // The block's header and the start of its payload, which the take reads and zeroes (the
    // hardware's own prefetcher follows a longer payload).
    let lines = (payload + BLOCK_HEADER).div_ceil(64).min(4);
    r.prefetch_write(block.wrapping_sub(BLOCK_HEADER), lines);
    if after != 0 {
        r.prefetch_write(after, 1);
    }
}

/// Checks that `e`, found on the list of `class`, is a slot without references whose block is
/// in use and of that class; returns the slot as read and its block's payload size.
#[inline]
fn check_parked<M: Mem + ?Sized>(r: &M, e: u64, class: usize) -> Result<(Slot, u64)> {
    let slot = directory::read_slot(r, e)?;
    let size = heap::payload_size(r, slot.block())?;
    if class_of(size) != Some(class) || slot.state().refs() != 0 {
        return Err(Error::Corrupted(format!(
            "parked slot {e} on the list of {}-byte blocks holds a block of {size} bytes with \
             {} references",
            (class + 1) as u64 * l::ALIGN,
            slot.state().refs()
        )));
    }
    Ok((slot, size))
}

/// Gives up to `max` parked blocks back to the heap (merged with their free neighbours) and
/// their slots to the free slots; returns how many. Each costs about 20 logged words, so a
/// caller keeps `max` small enough for one update's undo log.
pub(crate) fn release(tx: &mut Tx, max: u64) -> Result<u64> {
    let mut released = 0;
    for class in 0..PARK_CLASSES {
        while released < max {
            let Some((e, _)) = pop(tx, class)? else {
                break;
            };
            directory::give_back(tx, e)?;
            released += 1;
        }
    }
    Ok(released)
}

/// Whether any block is parked.
pub(crate) fn any<M: Mem + ?Sized>(r: &M) -> Result<bool> {
    Ok(r.load(l::PARKED_BYTES)? != 0)
}

/// The parked blocks and their heap bytes, headers included, walked (bounded: no more slots
/// than the heap could hold; `Corrupted` on damage).
pub(crate) fn count_parked<M: Mem + ?Sized>(r: &M) -> Result<(u64, u64)> {
    let limit = r.geometry().max_blocks();
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for class in 0..PARK_CLASSES {
        let mut e = r.load(head(class))?;
        while e != 0 {
            blocks += 1;
            if blocks > limit {
                return Err(Error::Corrupted(
                    "the parked-block lists hold more slots than the heap could (a cycle?)".into(),
                ));
            }
            let (slot, size) = check_parked(r, e, class)?;
            bytes += size + BLOCK_HEADER;
            e = slot.next();
        }
    }
    Ok((blocks, bytes))
}

/// After a recovery (under the lock): sets `PARKED_BYTES`, which updates change outside the
/// undo log, to what the lists hold.
pub(crate) fn recount(r: &Region) -> Result<()> {
    r.store(l::PARKED_BYTES, count_parked(r)?.1)
}

/// Checks every list and that they hold `parked_bytes`; returns the parked blocks and their
/// bytes, headers included.
pub(crate) fn verify<M: Mem + ?Sized>(r: &M) -> Result<(u64, u64)> {
    let (blocks, bytes) = count_parked(r)?;
    if bytes != r.load(l::PARKED_BYTES)? {
        return Err(Error::Corrupted(format!(
            "{blocks} parked blocks hold {bytes} bytes, the counter says {}",
            r.load(l::PARKED_BYTES)?
        )));
    }
    Ok((blocks, bytes))
}
