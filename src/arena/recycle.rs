//! Parked blocks: when a small named block is removed, its directory slot keeps its heap block
//! and waits in its size class for the next name of that size. Taking a parked pair back logs
//! 4 words where carving a new one from the heap logs about 20, and removing a name parks it
//! with 2 or 3 instead of the ~20 of freeing and merging — the undo log is most of a named
//! allocation's cost.
//!
//! Takes come in the order of the blocks' addresses. Each class has [`PARK_LISTS`] lists, each
//! kept ascending by block, and a take pops the lowest head of them. A removed slot goes to its
//! process's own list (by its attacher record: creator 0, next attacher 1, ...) where its block
//! keeps that list's order, before the head or after the tail; else after the largest tail
//! below its block, before the smallest head above it, or into an empty list. Names released in
//! the order they were made (or the reverse) extend one list, and up to four ranks that made
//! their names in turns and release them each in its own order extend one each, each linking
//! after a slot it wrote itself. New names then sweep the parked blocks in order, which the
//! hardware's prefetcher follows, instead of hopping between the ranks' blocks, over twice the
//! memory, as a single last-in-first-out list did (docs/performance-notes.md, "Parked pairs in
//! address order"). A slot that fits no list (more orders interleaved than lists, as with more
//! than four ranks) goes before the head closest below it: takes are then out of order by that
//! much, never wrong.
//!
//! A list's head and tail are written through the undo log; the offsets of their blocks, kept
//! beside them so that choosing a list reads no slot, are hints written outside it. A rollback
//! can leave a hint stale, and a recovery recounts them: nothing but the order of takes
//! depends on them.
//!
//! Parked blocks stay "in use" for the heap (its `used` counts them); [`Stats`] reports them as
//! free. They are given back to the heap (and merged with their neighbours) when an allocation
//! does not fit otherwise, and by [`Arena::coalesce`].
//!
//! A parked slot has no references and is on no chain, so lock-free readers holding its offset
//! from before leave it alone (as they do a free slot); its `next` word links the list and its
//! `block` word names its block, both written through the undo log (as are the lists' heads and
//! tails), so that a rollback leaves every list well formed.
//!
//! [`Stats`]: crate::arena::Stats
//! [`Arena::coalesce`]: crate::arena::Arena::coalesce

use super::directory::{self, Slot};
use super::heap::{self, BLOCK_HEADER};
use super::layout::{self as l, PARK_CLASSES, PARK_LISTS};
use super::region::{Mem, Region};
use super::undo::{Counter, Tx};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// The class of a block with `payload` bytes (a multiple of 16), if it is small enough.
#[inline]
fn class_of(payload: u64) -> Option<usize> {
    let class = (payload / l::ALIGN).checked_sub(1)? as usize;
    (payload % l::ALIGN == 0 && class < PARK_CLASSES).then_some(class)
}

/// Offset of list `list`'s head in class `class`; its tail, the head's block and the tail's
/// block follow.
#[inline]
pub(crate) fn head_of(class: usize, list: usize) -> u64 {
    l::PARKED + (class * PARK_LISTS + list) as u64 * 32
}

/// Offset of list `list`'s tail in class `class`.
#[inline]
pub(crate) fn tail_of(class: usize, list: usize) -> u64 {
    head_of(class, list) + TAIL as u64 * 8
}

/// Words of a list from its head: the head, its tail, and the hints (their blocks).
const HEAD: usize = 0;
const TAIL: usize = 1;
const HEAD_BLOCK: usize = 2;
const TAIL_BLOCK: usize = 3;

/// The lists of one class, in place in the header (two cache lines).
struct Lists<'a>(&'a [AtomicU64]);

impl<'a> Lists<'a> {
    #[inline(always)]
    fn of(r: &'a Region, class: usize) -> Self {
        Lists(r.header_words(head_of(class, 0), 4 * PARK_LISTS))
    }

    #[inline(always)]
    fn get(&self, list: usize, word: usize) -> u64 {
        self.0[4 * list + word].load(Ordering::Relaxed)
    }

    /// A hint: written outside the undo log (see the module's docs).
    #[inline(always)]
    fn hint(&self, list: usize, word: usize, block: u64) {
        self.0[4 * list + word].store(block, Ordering::Relaxed);
    }

    /// The non-empty list whose head has the lowest block (by the hints).
    #[inline(always)]
    fn lowest(&self) -> Option<usize> {
        let (mut best, mut key) = (None, u64::MAX);
        for i in 0..PARK_LISTS {
            if self.get(i, HEAD) != 0 && self.get(i, HEAD_BLOCK) <= key {
                (best, key) = (Some(i), self.get(i, HEAD_BLOCK));
            }
        }
        best
    }

    /// Where a slot whose block is at `block` goes: `(list, true)` after that list's tail,
    /// `(list, false)` before its head. The `home` list if it keeps its order there (empty,
    /// or the block beyond its tail or before its head); else after the largest tail below
    /// it, before the smallest head above it, or into an empty list; else (inside every
    /// list's range) before the head closest below it, out of order.
    #[inline(always)]
    fn place(&self, block: u64, home: usize) -> (usize, bool) {
        const NONE: usize = usize::MAX;
        if self.get(home, HEAD) == 0 || self.get(home, HEAD_BLOCK) > block {
            return (home, false);
        }
        if self.get(home, TAIL_BLOCK) < block {
            return (home, true);
        }
        let (mut after, mut after_key) = (NONE, 0);
        let (mut before, mut before_key) = (NONE, u64::MAX);
        let (mut empty, mut closest, mut closest_key) = (NONE, 0, 0);
        for i in 0..PARK_LISTS {
            if self.get(i, HEAD) == 0 {
                empty = empty.min(i);
                continue;
            }
            let (head_block, tail_block) = (self.get(i, HEAD_BLOCK), self.get(i, TAIL_BLOCK));
            if tail_block < block && tail_block >= after_key {
                (after, after_key) = (i, tail_block);
            }
            if head_block > block && head_block < before_key {
                (before, before_key) = (i, head_block);
            }
            if head_block >= closest_key {
                (closest, closest_key) = (i, head_block);
            }
        }
        if after != NONE {
            (after, true)
        } else if before != NONE {
            (before, false)
        } else if empty != NONE {
            (empty, false)
        } else {
            (closest, false)
        }
    }
}

/// Parks `slot` (already unlinked from its chain, without references) with its block, in the
/// list where its block keeps the order. False when the block is too large to park: the
/// caller frees both then.
pub(crate) fn park(tx: &mut Tx, slot: &Slot) -> Result<bool> {
    let (r, e, block) = (tx.region(), slot.at, slot.block());
    let payload = heap::payload_size(r, block)?;
    let Some(class) = class_of(payload) else {
        return Ok(false);
    };
    let lists = Lists::of(r, class);
    let (i, append) = lists.place(block, tx.home());
    let at = head_of(class, i);
    if append {
        let tail = lists.get(i, TAIL);
        // The tail's link is written: it must be a slot that ends a list (on no chain: no
        // references). Its line is this process's, warm. Its block's header is not read, as a
        // head's is before a take: with two ranks' blocks interleaved, that line is often the
        // other rank's (the end of its block); alternated jobs with that read showed their
        // releases up to 50-90 ns slower.
        let last = directory::read_slot(r, tail)?;
        if last.next() != 0 || last.state().refs() != 0 {
            return Err(Error::Corrupted(format!(
                "the tail {tail} of a list of parked {}-byte blocks is followed by {} and has \
                 {} references",
                (class + 1) as u64 * l::ALIGN,
                last.next(),
                last.state().refs()
            )));
        }
        tx.set(tail + l::E_NEXT, e)?;
        // The link the slot had on its chain, mostly 0 already (a chain per name): no log
        // for a word that keeps its value.
        if slot.next() != 0 {
            tx.set(e + l::E_NEXT, 0)?;
        }
        tx.set(tail_of(class, i), e)?;
        lists.hint(i, TAIL_BLOCK, block);
    } else {
        let head = lists.get(i, HEAD);
        if head == 0 {
            // A new list: this slot is its tail too. The list's last slot often comes back
            // (a name made and released in turn), and an empty list's tail is read by no one:
            // a tail that says so already needs no logged write.
            if lists.get(i, TAIL) != e {
                tx.set(tail_of(class, i), e)?;
            }
            lists.hint(i, TAIL_BLOCK, block);
        }
        tx.set(e + l::E_NEXT, head)?;
        tx.set(at, e)?;
        lists.hint(i, HEAD_BLOCK, block);
    }
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

/// Takes the head with the lowest block of the lists of `class` off its list, checked:
/// `(slot, block)`.
#[inline(always)]
fn pop(tx: &mut Tx, class: usize) -> Result<Option<(u64, u64)>> {
    let r = tx.region();
    let lists = Lists::of(r, class);
    let Some(i) = lists.lowest() else {
        return Ok(None);
    };
    let e = lists.get(i, HEAD);
    let (slot, size) = check_parked(r, e, class)?;
    // An emptied list keeps its stale tail: nothing reads a tail while the head is 0.
    tx.set(head_of(class, i), slot.next())?;
    tx.count(Counter::ParkedBytes, (size + BLOCK_HEADER).wrapping_neg());
    // The new head's block: its slot line came with an earlier take's prefetch (or its park).
    let next_block = match slot.next() {
        0 => 0,
        next => r.peek::<1>(next + l::E_BLOCK).map_or(0, |[b]| b),
    };
    lists.hint(i, HEAD_BLOCK, next_block);
    let next = lists.lowest().map_or(0, |j| lists.get(j, HEAD));
    prefetch_next(r, next, size);
    Ok(Some((e, slot.block())))
}

/// Starts bringing the parked pairs that the next takes of this class will pop: the block of
/// `next` (the new lowest head) and the slot after it on its list. Parked pairs lie wherever
/// their names were removed, in any order, so each take would otherwise wait for a cache miss
/// on its slot, then one on its block (one process making 20,000 names from 80,000 pairs
/// parked in random order: 430-460 ns a name without this, 180-230 with it, 150 when they were
/// parked in order; `same_names --scatter`). `next`'s slot line was brought by an earlier take
/// (or parked lately), so reading its words here rarely waits. Only hints: nothing read here
/// is trusted, and the next take checks its pair as ever.
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
/// than the heap could hold; `Corrupted` on damage, a list's tail that is not its last slot
/// included).
pub(crate) fn count_parked<M: Mem + ?Sized>(r: &M) -> Result<(u64, u64)> {
    let limit = r.geometry().max_blocks();
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for class in 0..PARK_CLASSES {
        for list in 0..PARK_LISTS {
            let (head, tail) = (r.load(head_of(class, list))?, r.load(tail_of(class, list))?);
            let (mut e, mut last) = (head, 0);
            while e != 0 {
                blocks += 1;
                if blocks > limit {
                    return Err(Error::Corrupted(
                        "the parked-block lists hold more slots than the heap could (a cycle?)"
                            .into(),
                    ));
                }
                let (slot, size) = check_parked(r, e, class)?;
                bytes += size + BLOCK_HEADER;
                last = e;
                e = slot.next();
            }
            if head != 0 && last != tail {
                return Err(Error::Corrupted(format!(
                    "list {list} of parked {}-byte blocks ends at slot {last}, but its tail \
                     says {tail}",
                    (class + 1) as u64 * l::ALIGN
                )));
            }
        }
    }
    Ok((blocks, bytes))
}

/// After a recovery (under the lock): sets `PARKED_BYTES`, which updates change outside the
/// undo log, to what the lists hold, and each list's hints to the blocks of its head and
/// tail.
pub(crate) fn recount(r: &Region) -> Result<()> {
    r.store(l::PARKED_BYTES, count_parked(r)?.1)?;
    for class in 0..PARK_CLASSES {
        let lists = Lists::of(r, class);
        for i in 0..PARK_LISTS {
            if lists.get(i, HEAD) != 0 {
                let head = directory::read_slot(r, lists.get(i, HEAD))?;
                let tail = directory::read_slot(r, lists.get(i, TAIL))?;
                lists.hint(i, HEAD_BLOCK, head.block());
                lists.hint(i, TAIL_BLOCK, tail.block());
            }
        }
    }
    Ok(())
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
