//! The walk of the whole directory and what is built on it: listing the entries (the API
//! and the command line), recounting after a recovery, and verification.

use super::extent::{extent, head_offset, Head};
use super::names::{hash, MAX_NAME_LEN};
use super::slot::{name_head, read_slot, Chain, Slot};
use crate::arena::layout as l;
use crate::arena::region::{Mem, Region};
use crate::error::{Error, Result};

/// One named block as the directory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct EntryInfo {
    /// The block's name.
    pub name: String,
    /// Offset of the block's data from the start of the arena (the same in every process).
    pub offset: u64,
    /// Bytes asked for.
    pub size: u64,
    /// How many references all processes together hold.
    pub refcount: u64,
}

pub(crate) fn read_entry<M: Mem + ?Sized>(r: &M, e: u64) -> Result<EntryInfo> {
    Ok(read_named(r, &read_slot(r, e)?)?.0)
}

/// The entry of `slot` and its name's bytes as its block holds them.
fn read_named<M: Mem + ?Sized>(r: &M, slot: &Slot) -> Result<(EntryInfo, Vec<u8>)> {
    let len = (slot.name_len() as usize).min(MAX_NAME_LEN);
    let mut name = vec![0u8; len];
    r.read_bytes(slot.block(), &mut name)?;
    let info = EntryInfo {
        name: String::from_utf8_lossy(&name).into_owned(),
        offset: slot.data(),
        size: slot.size(),
        refcount: slot.state().refs(),
    };
    Ok((info, name))
}

/// Every entry, in bucket order, at most `limit` of them (`Ok((entries, true))` when there were
/// more). Cost: O(buckets + entries).
pub(crate) fn entries<M: Mem + ?Sized>(r: &M, limit: u64) -> Result<(Vec<EntryInfo>, bool)> {
    match entries_partial(r, limit) {
        (out, more, None) => Ok((out, more)),
        (_, _, Some(e)) => Err(e),
    }
}

/// Like [`entries`], keeping what was found before damage stopped the walk (for inspection).
pub(crate) fn entries_partial<M: Mem + ?Sized>(
    r: &M,
    limit: u64,
) -> (Vec<EntryInfo>, bool, Option<Error>) {
    let live = r.load(l::LIVE_BLOCKS).unwrap_or(0);
    let cap = live.min(limit).min(r.geometry().max_blocks()).min(1 << 20);
    let mut out = Vec::with_capacity(cap as usize);
    let walked = each_entry(r, |_, slot| {
        if out.len() as u64 >= limit {
            return Ok(false);
        }
        out.push(read_entry(r, slot.at)?);
        Ok(true)
    });
    match walked {
        Ok(more) => (out, more, None),
        Err(e) => (out, false, Some(e)),
    }
}

/// The one walk of the whole directory: calls `visit(chain head offset, slot)` for every entry
/// on the chains, in directory order, until it returns false. Bounded: `Corrupted` on a bad link, a
/// cycle, or more entries than the heap could hold. True when `visit` stopped the walk.
pub(crate) fn each_entry<M: Mem + ?Sized>(
    r: &M,
    mut visit: impl FnMut(u64, &Slot) -> Result<bool>,
) -> Result<bool> {
    let g = *r.geometry();
    let mut total = 0u64;
    let heads = (0..g.groups())
        .flat_map(|group| (0..l::GROUP_HEADS).map(move |head| head_offset(&g, group, head)));
    for i in heads {
        let mut chain = Chain::new(r, i)?;
        while let Some(slot) = chain.step()? {
            total += 1;
            if total > g.max_blocks() {
                return Err(Error::Corrupted(
                    "the directory holds more entries than the heap could".into(),
                ));
            }
            if !visit(i, &slot)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The entries on the chains and the sum of their sizes: what `LIVE_BLOCKS` and `REQUESTED`
/// must say.
fn count_entries<M: Mem + ?Sized>(r: &M) -> Result<(u64, u64)> {
    let (mut seen, mut requested) = (0u64, 0u64);
    each_entry(r, |_, slot| {
        seen += 1;
        requested = requested.wrapping_add(slot.size());
        Ok(true)
    })?;
    Ok((seen, requested))
}

/// After a recovery (under the lock): sets `LIVE_BLOCKS` and `REQUESTED`, which updates change
/// outside the undo log, to what the directory holds. O(buckets + entries).
pub(crate) fn recount(r: &Region) -> Result<()> {
    let (live, requested) = count_entries(r)?;
    r.store(l::LIVE_BLOCKS, live)?;
    r.store(l::REQUESTED, requested)
}

/// Checks that every entry is inside the heap, in the right bucket, and counted.
pub(crate) fn verify<M: Mem + ?Sized>(r: &M) -> Result<u64> {
    let live = r.load(l::LIVE_BLOCKS)?;
    let g = r.geometry();
    // Every entry must be in the group its hash gives under this extent, so none is in an
    // unused group.
    let extent = extent(r)?;
    let mut seen = 0u64;
    let mut requested = 0u64;
    each_entry(r, |i, slot| {
        let (info, name) = read_named(r, slot)?;
        // An entry without references is allowed: its last holder died before removing it,
        // and the next update that meets it removes it.
        let h = hash(&name);
        // Lookups compare the slot's hash and its copy of the name's first bytes: a slot that
        // disagrees with its block about them holds a name no lookup finds, or another's.
        if slot.hash() != h || slot.stored_name_head() != name_head(&name) {
            return Err(Error::Corrupted(format!(
                "the slot of entry {:?} at offset {} disagrees with its name (hash or first bytes)",
                info.name, slot.at
            )));
        }
        if extent.chain_of(g, h).1 != i {
            return Err(Error::Corrupted(format!(
                "entry {:?} is misfiled",
                info.name
            )));
        }
        // A head whose filter lacks a name of its chain would make lock-free lookups miss it.
        if !Head(r.load(i)?).may_hold(h) {
            return Err(Error::Corrupted(format!(
                "the chain head at offset {i} does not announce entry {:?} in its filter",
                info.name
            )));
        }
        slot.placed(r.geometry(), l::ALIGN)?;
        seen += 1;
        requested = requested.wrapping_add(info.size);
        if seen > live {
            return Err(Error::Corrupted(format!(
                "more entries than the {live} counted"
            )));
        }
        Ok(true)
    })?;
    if seen != live || requested != r.load(l::REQUESTED)? {
        return Err(Error::Corrupted(format!(
            "{seen} entries of {requested} bytes, counters say {live} and {}",
            r.load(l::REQUESTED)?
        )));
    }
    Ok(seen)
}
