//! A two-level segregated-fit (TLSF) heap over arena offsets: O(1) allocate and free with
//! immediate coalescing. All metadata lives in the arena (`Meta` in the header plus a 16-byte
//! header per block); every change goes through the undo log.
//!
//! Block at offset `b`: `[prev_phys: u64][size | flags: u64][payload ...]`. `prev_phys` is valid
//! only when the previous block is free. Free blocks keep `next_free` and `prev_free` (offsets,
//! 0 = none) in the first 16 bytes of their payload.
//!
//! Blocks are carved from the bottom of a free block ([`alloc`]); what is never freed (the
//! directory's slot chunks) from the top ([`alloc_top`]), so that the two do not interleave.

use crate::arena::layout::{self as l, ALIGN, FL_SHIFT, SL_COUNT, SL_LOG2, SMALL_BLOCK};
use crate::arena::region::{Mem, Region};
use crate::arena::undo::Tx;
use crate::error::{Error, Result};

mod verify;
pub(crate) use verify::verify;
pub use verify::HeapReport;

const HDR: u64 = 16;
/// Bytes of a block's header, counted in `used` with its payload.
pub(crate) const BLOCK_HEADER: u64 = HDR;
const MIN_PAYLOAD: u64 = 16;
const FREE: u64 = 1;
const PREV_FREE: u64 = 2;
const FLAGS: u64 = FREE | PREV_FREE;

fn damaged(what: String) -> Error {
    Error::Corrupted(what)
}

/// Checks that `b` can be the header of a block: inside the heap, before the sentinel, aligned.
#[inline]
fn check_block<M: Mem + ?Sized>(r: &M, b: u64) -> Result<u64> {
    let g = r.geometry();
    if b < g.heap_offset || b >= g.sentinel() || b % ALIGN != 0 {
        return Err(damaged(format!(
            "a heap link points to offset {b}, which is not a block of the heap {}..{}",
            g.heap_offset, g.heap_end
        )));
    }
    Ok(b)
}

fn size_of_block<M: Mem + ?Sized>(r: &M, b: u64) -> Result<u64> {
    Ok(r.load(b + 8)? & !FLAGS)
}
fn flags<M: Mem + ?Sized>(r: &M, b: u64) -> Result<u64> {
    Ok(r.load(b + 8)? & FLAGS)
}
/// The block after `b`, checked to lie in the heap (the sentinel included).
fn next_phys<M: Mem + ?Sized>(r: &M, b: u64) -> Result<u64> {
    end_of(r, b, size_of_block(r, b)?)
}

/// The end of block `b` of `size` payload bytes, checked to lie in the heap.
#[inline]
fn end_of<M: Mem + ?Sized>(r: &M, b: u64, size: u64) -> Result<u64> {
    b.checked_add(HDR)
        .and_then(|x| x.checked_add(size))
        .filter(|&n| n <= r.geometry().sentinel())
        .ok_or_else(|| {
            damaged(format!(
                "block {b} of {size} bytes runs past the heap's end"
            ))
        })
}

#[inline(always)]
fn set_size_flags(tx: &mut Tx, b: u64, size: u64, flags: u64) -> Result<()> {
    tx.set(b + 8, size | flags)
}
fn set_flag(tx: &mut Tx, b: u64, flag: u64, on: bool) -> Result<()> {
    let v = tx.get(b + 8)?;
    tx.set(b + 8, if on { v | flag } else { v & !flag })
}

/// First- and second-level class of a block of payload `size`.
fn mapping(size: u64) -> (usize, usize) {
    if size < SMALL_BLOCK {
        (0, (size / (SMALL_BLOCK / SL_COUNT as u64)) as usize)
    } else {
        let fl = 63 - size.leading_zeros();
        let sl = ((size >> (fl - SL_LOG2)) ^ (1 << SL_LOG2)) as usize;
        ((fl - (FL_SHIFT - 1)) as usize, sl)
    }
}

/// Class to search so that any block found there fits `size`.
fn mapping_search(size: u64) -> (usize, usize) {
    if size < SMALL_BLOCK {
        mapping(size)
    } else {
        let round = (1u64 << (63 - size.leading_zeros() - SL_LOG2)) - 1;
        mapping(size + round)
    }
}

/// The class of a free block, checked to be one the bitmaps have.
fn class_of<M: Mem + ?Sized>(r: &M, b: u64) -> Result<(usize, usize)> {
    free_class(b, size_of_block(r, b)?)
}

/// The class of free block `b` of `size` payload bytes, checked to be one the bitmaps have.
fn free_class(b: u64, size: u64) -> Result<(usize, usize)> {
    let (fl, sl) = mapping(size);
    if fl >= l::FL_COUNT || size < MIN_PAYLOAD {
        return Err(damaged(format!("block {b} has an impossible size {size}")));
    }
    Ok((fl, sl))
}

fn head_off(fl: usize, sl: usize) -> u64 {
    l::HEADS + ((fl * SL_COUNT + sl) as u64) * 8
}
fn sl_off(fl: usize) -> u64 {
    l::SL_BITMAP + fl as u64 * 8
}

fn insert_free(tx: &mut Tx, b: u64) -> Result<()> {
    let (fl, sl) = class_of(tx.region(), b)?;
    let head = tx.get(head_off(fl, sl))?;
    tx.set(b + HDR, head)?;
    tx.set(b + HDR + 8, 0)?;
    if head != 0 {
        check_block(tx.region(), head)?;
        tx.set(head + HDR + 8, b)?;
    }
    tx.set(head_off(fl, sl), b)?;
    tx.set(sl_off(fl), tx.get(sl_off(fl))? | (1 << sl))?;
    tx.set(l::FL_BITMAP, tx.get(l::FL_BITMAP)? | (1 << fl))
}

fn remove_free(tx: &mut Tx, b: u64) -> Result<()> {
    let (fl, sl) = class_of(tx.region(), b)?;
    let next = tx.get(b + HDR)?;
    let prev = tx.get(b + HDR + 8)?;
    if next != 0 {
        check_block(tx.region(), next)?;
        tx.set(next + HDR + 8, prev)?;
    }
    if prev != 0 {
        check_block(tx.region(), prev)?;
        tx.set(prev + HDR, next)?;
    } else {
        tx.set(head_off(fl, sl), next)?;
        if next == 0 {
            let slmap = tx.get(sl_off(fl))? & !(1 << sl);
            tx.set(sl_off(fl), slmap)?;
            if slmap == 0 {
                tx.set(l::FL_BITMAP, tx.get(l::FL_BITMAP)? & !(1 << fl))?;
            }
        }
    }
    Ok(())
}

/// Splits free block `b` (of class `class`, size-and-flags `word`) into its first `want`
/// payload bytes, taken out of the free lists and marked in use, and a free tail of the same
/// class, which takes `b`'s place in `b`'s list: two links and the tail's words instead of a
/// removal and an insertion (which move the bitmaps). Every word that a rollback must give
/// back is logged, so that it gives back `b` whole, in its list.
///
/// The tail's own three words are stored without logging when they lie at or above
/// `pristine`, the mark as it was before this update. The caller has already raised the mark
/// past them (it is never lowered, a rollback included), so that memory is zeroed before
/// anyone is handed it, and after a rollback they are bytes inside `b`'s payload past its
/// links, which nothing reads. A fresh arena's carve, name after name, logs 5 words instead
/// of 8.
#[inline(always)]
fn carve(
    tx: &mut Tx,
    b: u64,
    word: u64,
    want: u64,
    class: (usize, usize),
    pristine: u64,
) -> Result<()> {
    let r = tx.region();
    let next = tx.get(b + HDR)?;
    let prev = tx.get(b + HDR + 8)?;
    let rest = b + HDR + want;
    let rest_size = (word & !FLAGS) - want - HDR;
    if rest >= pristine {
        // Read before it is written: the tail is often the first word of a page that another
        // rank reserved, not yet in this process's page tables, and a read fault maps the
        // pages around it as well (fault-around) where a write fault maps one.
        std::hint::black_box(r.load(rest + 8)?);
        r.store_words(rest + 8, &[rest_size | FREE, next, prev])?;
    } else {
        set_size_flags(tx, rest, rest_size, FREE)?;
        tx.set(rest + HDR, next)?;
        tx.set(rest + HDR + 8, prev)?;
    }
    if next != 0 {
        check_block(r, next)?;
        tx.set(next + HDR + 8, rest)?;
    }
    if prev != 0 {
        check_block(r, prev)?;
        tx.set(prev + HDR, rest)?;
    } else {
        tx.set(head_off(class.0, class.1), rest)?;
    }
    // The block's own links lie in the payload that is zeroed and written without logging.
    tx.set(b + HDR, 0)?;
    tx.set(b + HDR + 8, 0)?;
    // The neighbour after the tail is in use (free neighbours are always merged).
    tx.set(rest + HDR + rest_size, rest)?;
    set_size_flags(tx, b, want, word & PREV_FREE)
}

/// A free block whose payload is at least `size` with its size-and-flags word, or None.
#[inline(always)]
fn find_suitable(r: &Region, size: u64) -> Result<Option<(u64, u64)>> {
    let (mut fl, sl) = mapping_search(size);
    if fl >= l::FL_COUNT {
        return Ok(None);
    }
    let mut slmap = r.load(sl_off(fl))? & (!0u64 << sl);
    if slmap == 0 {
        let flmap = r.load(l::FL_BITMAP)? & (!0u64).checked_shl(fl as u32 + 1).unwrap_or(0);
        if flmap == 0 {
            return Ok(None);
        }
        fl = flmap.trailing_zeros() as usize;
        if fl >= l::FL_COUNT {
            return Err(damaged(format!(
                "the heap's class bitmap {flmap:#x} is impossible"
            )));
        }
        slmap = r.load(sl_off(fl))?;
    }
    if slmap == 0 {
        return Err(damaged(format!(
            "class {fl} is marked populated but has no list"
        )));
    }
    let sl = slmap.trailing_zeros() as usize;
    let b = r.load(head_off(fl, sl))?;
    if b == 0 {
        return Err(damaged(format!(
            "free list ({fl},{sl}) is marked populated but empty"
        )));
    }
    usable_free_block(r, b, size).map(Some)
}

/// Checks that a free block taken from a list is really a free block of at least `size`, lying
/// inside the heap. Returns the block with its size-and-flags word, read once.
#[inline(always)]
fn usable_free_block(r: &Region, b: u64, size: u64) -> Result<(u64, u64)> {
    check_block(r, b)?;
    let word = r.load(b + 8)?;
    end_of(r, b, word & !FLAGS)?;
    if word & FREE == 0 || word & !FLAGS < size {
        return Err(damaged(format!(
            "free list holds block {b}, which is in use or smaller than its class"
        )));
    }
    Ok((b, word))
}

/// The fallback when no class above `size`'s is populated: a block of `size`'s own class may
/// still be large enough (the class spans a range of sizes). First fit along that one list.
fn find_in_own_class(r: &Region, size: u64) -> Result<Option<(u64, u64)>> {
    let (fl, sl) = mapping(size);
    if fl >= l::FL_COUNT {
        return Ok(None);
    }
    let mut found = None;
    walk_free_list(r, (fl, sl), |b, have| {
        found = (have >= size).then_some(b);
        found.is_none()
    })?;
    found.map(|b| usable_free_block(r, b, size)).transpose()
}

/// Calls `visit` with each block of the free list of `class` and its payload size, in list
/// order, while it returns true. Bounded by the most blocks the heap can hold, so a damaged
/// list that loops is an error.
fn walk_free_list<M: Mem + ?Sized>(
    r: &M,
    (fl, sl): (usize, usize),
    mut visit: impl FnMut(u64, u64) -> bool,
) -> Result<()> {
    let mut b = r.load(head_off(fl, sl))?;
    let mut steps = 0;
    while b != 0 {
        steps += 1;
        if steps > r.geometry().max_blocks() {
            return Err(damaged(format!(
                "free list ({fl},{sl}) does not end (a cycle?)"
            )));
        }
        check_block(r, b)?;
        if !visit(b, size_of_block(r, b)?) {
            break;
        }
        b = r.load(b + HDR)?;
    }
    Ok(())
}

/// The largest class holding a free block, as the bitmaps say (checked against each other),
/// or None when the heap has no free block.
fn largest_class<M: Mem + ?Sized>(r: &M) -> Result<Option<(usize, usize)>> {
    let flmap = r.load(l::FL_BITMAP)?;
    if flmap == 0 {
        return Ok(None);
    }
    let fl = 63 - flmap.leading_zeros() as usize;
    if fl >= l::FL_COUNT {
        return Err(damaged(format!(
            "the heap's class bitmap {flmap:#x} is impossible"
        )));
    }
    let slmap = r.load(sl_off(fl))?;
    if slmap == 0 {
        return Err(damaged(format!(
            "class {fl} is marked populated but has no list"
        )));
    }
    Ok(Some((fl, 63 - slmap.leading_zeros() as usize)))
}

/// Lays out an empty heap in `[heap_offset, heap_end)`: one free block and the sentinel.
/// Runs on fresh memory before anyone else can see the arena, so it writes without logging.
pub(crate) fn init(r: &Region) -> Result<()> {
    let g = *r.geometry();
    let first_size = g.heap_end - g.heap_offset - 2 * HDR;
    let sentinel = g.sentinel();
    r.store(g.heap_offset + 8, first_size | FREE)?;
    r.store(sentinel, g.heap_offset)?;
    r.store(sentinel + 8, PREV_FREE)?;
    let (fl, sl) = mapping(first_size);
    r.store(head_off(fl, sl), g.heap_offset)?;
    r.store(sl_off(fl), 1 << sl)?;
    r.store(l::FL_BITMAP, 1 << fl)?;
    r.store(l::PRISTINE_FROM, g.heap_offset + HDR + MIN_PAYLOAD)
}

/// Bytes the heap can hand out in total (all blocks with their headers, minus the sentinel).
pub(crate) fn capacity<M: Mem + ?Sized>(r: &M) -> u64 {
    let g = r.geometry();
    g.heap_end - g.heap_offset - HDR
}

/// The payload a request of `size` bytes gets: at least 16 bytes, a multiple of 16.
pub(crate) fn payload_for(size: u64) -> Result<u64> {
    size.max(MIN_PAYLOAD)
        .checked_next_multiple_of(ALIGN)
        .filter(|&w| w < l::MAX_ARENA_SIZE)
        .ok_or_else(|| Error::InvalidArgument(format!("a block of {size} bytes cannot exist")))
}

/// The payload size of the block in use whose payload starts at `payload`; `Corrupted` if
/// that is not a block in use.
#[inline(always)]
pub(crate) fn payload_size<M: Mem + ?Sized>(r: &M, payload: u64) -> Result<u64> {
    let b = check_block(r, payload.wrapping_sub(HDR))?;
    // One read of the size word (every parked reuse checks its block this way).
    let word = r.load(b + 8)?;
    let size = word & !FLAGS;
    end_of(r, b, size)?;
    if word & FREE != 0 {
        return Err(damaged(format!("block at offset {b} is free, not in use")));
    }
    Ok(size)
}

/// Allocates a zeroed block with at least `size` payload bytes, 16-byte aligned. Returns the
/// payload offset. Cost: O(1) plus zeroing the part of the block that was used before.
pub(crate) fn alloc(tx: &mut Tx, size: u64) -> Result<u64> {
    let r = tx.region();
    let want = payload_for(size)?;
    let found = match find_suitable(r, want)? {
        Some(b) => Some(b),
        None => find_in_own_class(r, want)?,
    };
    let Some((b, word)) = found else {
        return Err(out_of_space(r, want + HDR));
    };
    // Everything below works from this one checked read of the block's header.
    let have = word & !FLAGS;
    let class = free_class(b, have)?;
    let splits = have - want >= HDR + MIN_PAYLOAD;
    let size = if splits { want } else { have };
    let (payload, end) = (b + HDR, b + HDR + size);
    // What lies at or above the mark is still zero (only the lock holder moves it). It is
    // raised past the block and a tail's header and links before anything is written, and
    // without logging: if this update is rolled back, the mark stays conservatively high
    // (more zeroing later, never stale bytes handed out).
    let pristine = r.load(l::PRISTINE_FROM)?;
    r.raise(
        l::PRISTINE_FROM,
        (end + HDR + MIN_PAYLOAD).min(r.geometry().heap_end),
    )?;
    if splits && mapping(have - want - HDR) == class {
        // The tail stays in the block's class (a fresh arena's one large block, carved name
        // after name): it takes the block's place in its list, and no bitmap changes.
        carve(tx, b, word, want, class, pristine)?;
    } else {
        remove_free(tx, b)?;
        // The payload is about to be zeroed and written without logging; log the free-list
        // links it held first, so that a rollback puts back a well-formed free block.
        tx.set(b + HDR, 0)?;
        tx.set(b + HDR + 8, 0)?;
        if splits {
            // Split: the tail becomes a free block of its own. Its neighbour after it is in use
            // (free neighbours are always merged), so only that neighbour's back link changes.
            let rest = b + HDR + want;
            let rest_size = have - want - HDR;
            set_size_flags(tx, rest, rest_size, FREE)?;
            let after = rest + HDR + rest_size;
            tx.set(after, rest)?;
            set_size_flags(tx, b, want, word & PREV_FREE)?;
            insert_free(tx, rest)?;
        } else {
            set_flag(tx, next_phys(r, b)?, PREV_FREE, false)?;
            set_size_flags(tx, b, have, word & PREV_FREE)?;
        }
    }
    hand_out(tx, payload, end, pristine)
}

/// The end of every allocation: counts the block `[payload, end)` (with its header) as used
/// and zeroes the part of it below `pristine` (what lies above is still zero). Returns the
/// payload offset.
#[inline(always)]
fn hand_out(tx: &mut Tx, payload: u64, end: u64, pristine: u64) -> Result<u64> {
    let r = tx.region();
    let used = tx.get(l::USED)?.wrapping_add(end - payload + HDR);
    tx.set(l::USED, used)?;
    r.raise(l::HIGH_WATER, used)?;
    if payload < pristine {
        r.zero(payload, end.min(pristine) - payload)?;
    }
    Ok(payload)
}

/// Allocates a zeroed block of at least `size` payload bytes from the top end of a free block
/// of the largest class, for what is never freed (the directory's slot chunks): those then
/// gather at the heap's end, away from the blocks that names take and give back, so that once
/// those are freed and merged (`coalesce`), the space they leave is whole again and new names
/// carve it without changing its class. In a fresh arena the chunks stack down from the
/// heap's end. O(1).
///
/// When that block is too small to split, this is [`alloc`] (the best fit, from the bottom).
/// The caller places the block its update is for first, so that a chunk never takes the room
/// that block needs.
///
/// What lies at or above the pristine mark stays zero wherever it is free: the chunk is
/// never freed, and its header words are logged, so that a rollback gives back zeros.
pub(crate) fn alloc_top(tx: &mut Tx, size: u64) -> Result<u64> {
    let r = tx.region();
    let want = payload_for(size)?;
    let Some((b, word)) = largest_class_head(r)? else {
        return alloc(tx, size);
    };
    let have = word & !FLAGS;
    if have < want + HDR + MIN_PAYLOAD {
        return alloc(tx, size);
    }
    let low = have - want - HDR;
    let top = b + HDR + low;
    let (payload, end) = (top + HDR, top + HDR + want);
    if mapping(low) == free_class(b, have)? {
        // Still in its class: it keeps its place in its list.
        set_size_flags(tx, b, low, FREE | (word & PREV_FREE))?;
    } else {
        remove_free(tx, b)?;
        set_size_flags(tx, b, low, FREE | (word & PREV_FREE))?;
        insert_free(tx, b)?;
    }
    tx.set(top, b)?;
    set_size_flags(tx, top, want, PREV_FREE)?;
    // `end` is `b`'s old neighbour (checked by `largest_class_head`), which now follows a
    // block in use.
    set_flag(tx, end, PREV_FREE, false)?;
    hand_out(tx, payload, end, r.load(l::PRISTINE_FROM)?)
}

/// The first block of the largest class that holds any, with its size-and-flags word
/// (checked), or None when the heap has no free block.
fn largest_class_head(r: &Region) -> Result<Option<(u64, u64)>> {
    let Some((fl, sl)) = largest_class(r)? else {
        return Ok(None);
    };
    match r.load(head_off(fl, sl))? {
        0 => Err(damaged(format!(
            "free list ({fl},{sl}) is marked populated but empty"
        ))),
        head => usable_free_block(r, head, MIN_PAYLOAD).map(Some),
    }
}

/// Frees the block whose payload is at `payload`, merging it with free neighbours.
pub(crate) fn free(tx: &mut Tx, payload: u64) -> Result<()> {
    let r = tx.region();
    let mut b = check_block(r, payload.wrapping_sub(HDR))?;
    if flags(r, b)? & FREE != 0 {
        return Err(damaged(format!("block at offset {b} freed twice")));
    }
    let mut size = size_of_block(r, b)?;
    next_phys(r, b)?;
    tx.set(l::USED, tx.get(l::USED)?.wrapping_sub(size + HDR))?;
    let mut fl = flags(r, b)? & PREV_FREE;
    if fl & PREV_FREE != 0 {
        let prev = check_block(r, r.load(b)?)?;
        if next_phys(r, prev)? != b || flags(r, prev)? & FREE == 0 {
            return Err(damaged(format!(
                "block {b}'s back link {prev} is not its free neighbour"
            )));
        }
        remove_free(tx, prev)?;
        size += HDR + size_of_block(r, prev)?;
        fl = flags(r, prev)? & PREV_FREE;
        b = prev;
    }
    let next = b + HDR + size;
    if next < r.geometry().sentinel() && flags(r, next)? & FREE != 0 {
        next_phys(r, next)?;
        remove_free(tx, next)?;
        size += HDR + size_of_block(r, next)?;
    }
    set_size_flags(tx, b, size, fl | FREE)?;
    let after = b + HDR + size;
    tx.set(after, b)?;
    set_flag(tx, after, PREV_FREE, true)?;
    insert_free(tx, b)
}

/// The heap's free bytes (parked blocks count as used). O(1).
fn free_bytes<M: Mem + ?Sized>(r: &M) -> Result<u64> {
    Ok(capacity(r).saturating_sub(r.load(l::USED)?))
}

/// The heap's figures before an update that may fail after it placed a block (a new name
/// whose chunk of directory slots does not fit beside it): what that failure puts back and
/// reports. Two loads of words the allocation touches anyway.
pub(crate) struct Before {
    free: u64,
    high_water: u64,
}

impl Before {
    pub(crate) fn read(r: &Region) -> Result<Before> {
        Ok(Before {
            free: free_bytes(r)?,
            high_water: r.load(l::HIGH_WATER)?,
        })
    }

    /// The error of that update, which placed a block of `payload` bytes and then failed
    /// with `e` (under the lock; the rollback gives the block back). Puts the high-water
    /// mark back, which allocations raise outside the undo log. An `OutOfSpace` then counts
    /// the block too, since the update needed both, with the free bytes from before;
    /// `largest_free` stays what was left beside the block, the room that was lacking.
    pub(crate) fn failed(&self, r: &Region, e: Error, payload: u64) -> Error {
        if let Err(damage) = r.store(l::HIGH_WATER, self.high_water) {
            return damage;
        }
        match e {
            Error::OutOfSpace {
                requested,
                largest_free,
                capacity,
                ..
            } => Error::OutOfSpace {
                requested: requested + payload + HDR,
                largest_free,
                free: self.free,
                capacity,
            },
            other => other,
        }
    }
}

/// Total free bytes (payload plus header of every free block) and the largest free payload.
pub(crate) fn free_space<M: Mem + ?Sized>(r: &M) -> Result<(u64, u64)> {
    let free = free_bytes(r)?;
    let mut largest = 0;
    if let Some(class) = largest_class(r)? {
        walk_free_list(r, class, |_, size| {
            largest = largest.max(size);
            true
        })?;
    }
    Ok((free, largest))
}

fn out_of_space(r: &Region, requested: u64) -> Error {
    match free_space(r) {
        Ok((free, largest_free)) => Error::OutOfSpace {
            requested,
            largest_free,
            free,
            capacity: capacity(r),
        },
        Err(e) => e,
    }
}
