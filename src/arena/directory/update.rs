//! Changes under the arena lock: the locked lookup (which removes entries their last holder
//! left behind), inserting a name, and removing one. Every write goes through the undo log.

use std::sync::atomic::Ordering;

use super::extent::{current_extent, tag, Head};
use super::growth::grow;
use super::slot::{
    block_request, check_entry, name_matches, read_slot, size_word, state, Chain, PENDING,
};
use crate::arena::layout::{self as l, round_up, ENTRY_SIZE};
use crate::arena::region::Mem;
use crate::arena::undo::{Counter, Tx};
use crate::arena::{heap, recycle};
use crate::error::{Error, Result};

/// The entry for `name` that holds references, if any (the caller holds the lock). Entries
/// left with no reference by a process that died between dropping the last one and removing
/// the entry are removed on the way ("zombies"), and an entry whose insertion was committed by
/// a process that died before publishing it is published: under the lock, after recovery,
/// every entry in a chain is committed.
pub(crate) fn lookup_locked(tx: &mut Tx, name: &[u8], h: u64) -> Result<Option<u64>> {
    let r = tx.region();
    // Each round removes one zombie, so the rounds are bounded by the chain's length.
    for _ in 0..=r.geometry().max_blocks() {
        let (_, bucket) = current_extent(r)?.chain_of(r.geometry(), h);
        let mut chain = Chain::new(r, bucket)?;
        let mut zombie = None;
        while let Some(slot) = chain.step()? {
            if slot.hash() != h || !name_matches(r, &slot, name)? {
                continue;
            }
            let e = slot.at;
            let s = state(r, e)?;
            if s.refs() == 0 {
                zombie = Some((e, s.generation()));
                break;
            }
            if s.pending() {
                r.heap_word(e + l::E_STATE)?
                    .fetch_and(!PENDING, Ordering::AcqRel);
            }
            return Ok(Some(e));
        }
        match zombie {
            Some((e, generation)) => remove_dead(tx, e, generation)?,
            None => return Ok(None),
        }
    }
    Err(Error::Corrupted("a directory chain keeps changing".into()))
}

/// A free slot, carving a new chunk of them from the heap when none is left.
fn take_slot(tx: &mut Tx) -> Result<u64> {
    let r = tx.region();
    let head = tx.get(l::SLOT_FREE)?;
    if head != 0 {
        let slot = check_entry(r, head)?;
        tx.set(l::SLOT_FREE, r.load(slot + l::E_NEXT)?)?;
        return Ok(slot);
    }
    let chunk = heap::alloc_top(tx, l::SLOTS_PER_CHUNK * ENTRY_SIZE)?;
    // The chunk is zeroed (generation 0, no references), and usually carved from memory above
    // the pristine mark, which a rollback must leave zero: its links are logged, and so are
    // the words of the first slot that `insert` stores without logging (37 words once every
    // 32 names).
    for word in STORED_UNLOGGED {
        tx.set(chunk + word, 0)?;
    }
    for i in 1..l::SLOTS_PER_CHUNK {
        let next = if i + 1 < l::SLOTS_PER_CHUNK {
            chunk + (i + 1) * ENTRY_SIZE
        } else {
            0
        };
        tx.set(chunk + i * ENTRY_SIZE + l::E_NEXT, next)?;
    }
    tx.set(l::SLOT_FREE, chunk + ENTRY_SIZE)?;
    tx.set(l::SLOTS, tx.get(l::SLOTS)?.wrapping_add(l::SLOTS_PER_CHUNK))?;
    Ok(chunk)
}

/// Creates the entry `name` holding one reference, with zeroed data of `bytes` bytes aligned
/// to `align`; returns the slot, its generation and the data offset. Lock-free readers see it
/// once the update commits.
pub(crate) fn insert(
    tx: &mut Tx,
    name: &[u8],
    h: u64,
    bytes: u64,
    align: u64,
) -> Result<(u64, u32, u64)> {
    let r = tx.region();
    let request = block_request(name.len() as u64, bytes, align)
        .ok_or_else(|| Error::InvalidArgument(format!("a block of {bytes} bytes cannot exist")))?;
    let payload = heap::payload_for(request)?;
    let (slot, block) = match recycle::take(tx, payload)? {
        Some((slot, block)) => {
            // Parked: whatever its last name left in it goes (fresh heap blocks come zeroed).
            r.zero(block, payload)?;
            (slot, block)
        }
        None => {
            // The block first: a chunk of slots carved before it could take the one free
            // block that fits it, where the chunk fits elsewhere. A block that does not fit
            // fails with the arena's figures as they stand.
            let before = heap::Before::read(r)?;
            let block = heap::alloc(tx, request)?;
            let slot = take_slot(tx).map_err(|e| before.failed(r, e, payload))?;
            (slot, block)
        }
    };
    let (group, bucket) = grow(tx)?.chain_of(r.geometry(), h);
    // Before the new slot is linked: readers of this chain see the version move.
    tx.touch(group)?;
    let data = round_up(block + name.len() as u64, align);
    let generation = state(r, slot)?.generation().wrapping_add(1);
    // The new generation first, pending: a reader holding this slot's offset from before now
    // leaves it alone. Logged, so that a rollback gives the slot back as it was.
    tx.set(
        slot + l::E_STATE,
        (u64::from(generation) << 32) | PENDING | 1,
    )?;
    r.write_bytes(block, name)?;
    r.store(slot + l::E_HASH, h)?;
    // The slot's copy of the name's first 16 bytes, read back from the block: its name area
    // is at least 16 bytes and was zero (a parked block zeroed above, a heap block zeroed by
    // the heap), so this is `name_head(name)` without assembling it byte by byte.
    let (head, head_rest) = (r.load(block)?, r.load(block + 8)?);
    r.store_words(
        slot + l::E_DATA,
        &[
            data,
            size_word(bytes, name.len() as u64),
            block,
            head,
            head_rest,
        ],
    )?;
    // Logged: on a rollback this word is the free list's link again.
    let head = Head(tx.get(bucket)?);
    tx.set(slot + l::E_NEXT, head.first())?;
    tx.set(bucket, Head::of(slot, head.filter() | tag(h)).0)?;
    tx.count(Counter::LiveBlocks, 1);
    tx.count(Counter::Requested, bytes);
    tx.publish_at_commit(slot + l::E_STATE);
    Ok((slot, generation, data))
}

// `insert` writes these fields with one store of consecutive words.
const _: () = assert!(
    l::E_SIZE == l::E_DATA + 8
        && l::E_BLOCK == l::E_DATA + 16
        && l::E_NAME_HEAD == l::E_DATA + 24
        && l::NAME_HEAD == 16
);

/// The words of a slot that `insert` stores without logging (a rollback leaves them to the
/// slot's next use, which writes them again), logged by `take_slot` when the slot is fresh.
const STORED_UNLOGGED: [u64; 6] = [
    l::E_HASH,
    l::E_DATA,
    l::E_SIZE,
    l::E_BLOCK,
    l::E_NAME_HEAD,
    l::E_NAME_HEAD + 8,
];

/// Removes entry `e` of generation `generation`, whose last reference was dropped: unlinks
/// it and parks its slot with its block (see `recycle.rs`), or frees both when the block is
/// too large to park. Nothing happens if another process removed it
/// already (it is no longer in its chain, or the slot moved on to another generation).
pub(crate) fn remove_dead(tx: &mut Tx, e: u64, generation: u32) -> Result<()> {
    let r = tx.region();
    let dead = read_slot(r, e)?;
    let s = dead.state();
    if s.generation() != generation || s.refs() != 0 {
        return Ok(());
    }
    let h = dead.hash();
    let (group, bucket) = current_extent(r)?.chain_of(r.geometry(), h);
    let mut link = bucket;
    let mut chain = Chain::new(r, bucket)?;
    // Stops at the link that holds `e`, without reading `e`'s slot a second time.
    while chain.next != e {
        let Some(x) = chain.step()? else {
            return Ok(());
        };
        link = x.at + l::E_NEXT;
    }
    tx.touch(group)?;
    // A head keeps its filter (the dead name's bit stays until the chain empties or is
    // rebuilt); a slot's link is a plain offset.
    let unlinked = if link == bucket {
        Head::of(dead.next(), Head(tx.get(bucket)?).filter()).0
    } else {
        dead.next()
    };
    tx.set(link, unlinked)?;
    tx.count(Counter::LiveBlocks, 1u64.wrapping_neg());
    tx.count(Counter::Requested, dead.size().wrapping_neg());
    if recycle::park(tx, &dead)? {
        return Ok(());
    }
    give_back(tx, e)
}

/// Frees the block of slot `e` (on no chain, without references) and puts the slot on the
/// free slots.
pub(crate) fn give_back(tx: &mut Tx, e: u64) -> Result<()> {
    heap::free(tx, tx.get(e + l::E_BLOCK)?)?;
    tx.set(e + l::E_NEXT, tx.get(l::SLOT_FREE)?)?;
    tx.set(l::SLOT_FREE, e)
}
