//! The name directory: a fixed array of buckets, each the head of a chain of entries. An entry
//! sits at the start of its own heap block, followed by the name and then the user's data, so a
//! named allocation is one heap allocation and lookups are O(1) expected.

use crate::arena::heap;
use crate::arena::layout::{self as l, round_up, ENTRY_SIZE};
use crate::arena::region::{Mem, Tx};
use crate::error::{Error, Result};

/// Longest block name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// FNV-1a with a final avalanche, so that names differing only in a trailing counter spread.
pub(crate) fn hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.contains('\0') {
        return Err(Error::InvalidName {
            name: name.chars().take(64).collect(),
            reason: "block names cannot contain a NUL byte".into(),
        });
    }
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidName {
            name: name.chars().take(64).collect(),
            reason: format!(
                "block names are 1 to {MAX_NAME_LEN} bytes, this one is {} bytes",
                name.len()
            ),
        });
    }
    Ok(())
}

fn bucket_of<M: Mem + ?Sized>(r: &M, h: u64) -> u64 {
    let g = r.geometry();
    g.buckets_offset + (h & (g.bucket_count - 1)) * 8
}

/// Checks that `e` can be a directory entry: an aligned heap payload with room for the entry.
fn check_entry<M: Mem + ?Sized>(r: &M, e: u64) -> Result<u64> {
    let g = r.geometry();
    if e < g.heap_offset + 16 || e % l::ALIGN != 0 || e > g.sentinel().saturating_sub(ENTRY_SIZE) {
        return Err(Error::Corrupted(format!(
            "a directory link points to offset {e}, outside the heap {}..{}",
            g.heap_offset, g.heap_end
        )));
    }
    Ok(e)
}

/// Follows a bucket chain one step at a time, refusing links outside the heap and chains
/// longer than the heap could hold (a cycle in damaged metadata).
/// Cycles are found within about twice the chain's length (Brent's algorithm), so a damaged
/// chain costs no more than the walk of a healthy one.
struct Chain<'m, M: Mem + ?Sized> {
    r: &'m M,
    next: u64,
    steps: u64,
    /// Brent: a remembered entry, and how far to go before remembering the next one.
    mark: u64,
    power: u64,
}

impl<'m, M: Mem + ?Sized> Chain<'m, M> {
    fn new(r: &'m M, bucket: u64) -> Result<Self> {
        Ok(Chain {
            r,
            next: r.load(bucket)?,
            steps: 0,
            mark: 0,
            power: 1,
        })
    }

    fn step(&mut self) -> Result<Option<u64>> {
        if self.next == 0 {
            return Ok(None);
        }
        if self.next == self.mark || self.steps >= self.r.geometry().max_blocks() {
            return Err(Error::Corrupted(format!(
                "a directory chain does not end (it loops back to offset {})",
                self.next
            )));
        }
        self.steps += 1;
        if self.steps == self.power {
            self.mark = self.next;
            self.power *= 2;
        }
        let e = check_entry(self.r, self.next)?;
        self.next = self.r.load(e + l::E_NEXT)?;
        Ok(Some(e))
    }
}

fn name_matches<M: Mem + ?Sized>(r: &M, entry: u64, name: &[u8]) -> Result<bool> {
    if r.load(entry + l::E_NAME_LEN)? != name.len() as u64 {
        return Ok(false);
    }
    let mut stored = [0u8; MAX_NAME_LEN];
    r.read_bytes(entry + ENTRY_SIZE, &mut stored[..name.len()])?;
    Ok(&stored[..name.len()] == name)
}

/// The entry for `name`, if any.
pub(crate) fn lookup<M: Mem + ?Sized>(r: &M, name: &[u8], h: u64) -> Result<Option<u64>> {
    let mut chain = Chain::new(r, bucket_of(r, h))?;
    while let Some(e) = chain.step()? {
        if r.load(e + l::E_HASH)? == h && name_matches(r, e, name)? {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// The data offset and size of entry `e`, checked to lie inside the heap and to be aligned
/// to `align`, so that a block handed to the user is memory this arena owns.
pub(crate) fn data_of<M: Mem + ?Sized>(r: &M, e: u64, align: u64) -> Result<(u64, u64)> {
    let (data, size) = (r.load(e + l::E_DATA)?, r.load(e + l::E_SIZE)?);
    let end = data.checked_add(size);
    if data < e + ENTRY_SIZE
        || data % align != 0
        || size == 0
        || end.is_none_or(|end| end > r.geometry().sentinel())
    {
        return Err(Error::Corrupted(format!(
            "entry at {e} describes {size} bytes at offset {data}, not a block of its heap"
        )));
    }
    Ok((data, size))
}

/// Heap bytes a block of `bytes` named `name_len` bytes needs, aligned to `align`.
pub(crate) fn block_request(name_len: u64, bytes: u64, align: u64) -> Option<u64> {
    round_up(ENTRY_SIZE + name_len, l::ALIGN)
        .checked_add(align - l::ALIGN)?
        .checked_add(bytes)
}

/// Creates a new entry with refcount 1 and zeroed data; returns the entry offset.
pub(crate) fn insert(tx: &mut Tx, name: &[u8], h: u64, bytes: u64, align: u64) -> Result<u64> {
    let r = *tx.region();
    let request = block_request(name.len() as u64, bytes, align)
        .ok_or_else(|| Error::InvalidArgument(format!("a block of {bytes} bytes cannot exist")))?;
    let entry = heap::alloc(tx, request)?;
    let data = round_up(
        entry + round_up(ENTRY_SIZE + name.len() as u64, l::ALIGN),
        align,
    );
    // The block is fresh and unreachable until the bucket link below, so plain stores suffice.
    let bucket = bucket_of(&r, h);
    r.store(entry + l::E_NEXT, tx.get(bucket)?)?;
    r.store(entry + l::E_HASH, h)?;
    r.store(entry + l::E_DATA, data)?;
    r.store(entry + l::E_SIZE, bytes)?;
    r.store(entry + l::E_REFCOUNT, 1)?;
    r.store(entry + l::E_NAME_LEN, name.len() as u64)?;
    r.write_bytes(entry + ENTRY_SIZE, name)?;
    tx.set(bucket, entry)?;
    tx.set(l::LIVE_BLOCKS, tx.get(l::LIVE_BLOCKS)?.wrapping_add(1))?;
    tx.set(l::REQUESTED, tx.get(l::REQUESTED)?.wrapping_add(bytes))?;
    Ok(entry)
}

/// Unlinks `entry` from its chain and frees its block.
pub(crate) fn remove(tx: &mut Tx, entry: u64) -> Result<()> {
    let r = *tx.region();
    let bucket = bucket_of(&r, r.load(entry + l::E_HASH)?);
    let mut link = bucket;
    let mut chain = Chain::new(&r, bucket)?;
    loop {
        let Some(e) = chain.step()? else {
            return Err(Error::Corrupted(format!(
                "entry at offset {entry} is missing from its bucket chain"
            )));
        };
        if e == entry {
            break;
        }
        link = e + l::E_NEXT;
    }
    tx.set(link, r.load(entry + l::E_NEXT)?)?;
    tx.set(l::LIVE_BLOCKS, tx.get(l::LIVE_BLOCKS)?.wrapping_sub(1))?;
    tx.set(
        l::REQUESTED,
        tx.get(l::REQUESTED)?
            .wrapping_sub(r.load(entry + l::E_SIZE)?),
    )?;
    heap::free(tx, entry)
}

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
    let len = (r.load(e + l::E_NAME_LEN)? as usize).min(MAX_NAME_LEN);
    let mut name = vec![0u8; len];
    r.read_bytes(e + ENTRY_SIZE, &mut name)?;
    Ok(EntryInfo {
        name: String::from_utf8_lossy(&name).into_owned(),
        offset: r.load(e + l::E_DATA)?,
        size: r.load(e + l::E_SIZE)?,
        refcount: r.load(e + l::E_REFCOUNT)?,
    })
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
    let g = *r.geometry();
    let live = r.load(l::LIVE_BLOCKS).unwrap_or(0);
    let mut out = Vec::with_capacity(live.min(limit).min(g.max_blocks()).min(1 << 20) as usize);
    let mut total = 0;
    let mut walk = || -> Result<bool> {
        for i in 0..g.bucket_count {
            let mut chain = Chain::new(r, g.buckets_offset + i * 8)?;
            while let Some(e) = chain.step()? {
                total += 1;
                if total > g.max_blocks() {
                    return Err(Error::Corrupted(
                        "the directory holds more entries than the heap could".into(),
                    ));
                }
                if out.len() as u64 >= limit {
                    return Ok(true);
                }
                out.push(read_entry(r, e)?);
            }
        }
        Ok(false)
    };
    match walk() {
        Ok(more) => (out, more, None),
        Err(e) => (out, false, Some(e)),
    }
}

/// Checks that every entry is inside the heap, in the right bucket, and counted.
pub(crate) fn verify<M: Mem + ?Sized>(r: &M) -> Result<u64> {
    let g = *r.geometry();
    let live = r.load(l::LIVE_BLOCKS)?;
    let mut seen = 0u64;
    let mut requested = 0u64;
    for i in 0..g.bucket_count {
        let mut chain = Chain::new(r, g.buckets_offset + i * 8)?;
        while let Some(e) = chain.step()? {
            let info = read_entry(r, e)?;
            if hash(info.name.as_bytes()) & (g.bucket_count - 1) != i || info.refcount == 0 {
                return Err(Error::Corrupted(format!(
                    "entry {:?} is misfiled or unowned",
                    info.name
                )));
            }
            data_of(r, e, l::ALIGN)?;
            seen += 1;
            requested = requested.wrapping_add(info.size);
            if seen > live {
                return Err(Error::Corrupted(format!(
                    "more entries than the {live} counted"
                )));
            }
        }
    }
    if seen != live || requested != r.load(l::REQUESTED)? {
        return Err(Error::Corrupted(format!(
            "{seen} entries of {requested} bytes, counters say {live} and {}",
            r.load(l::REQUESTED)?
        )));
    }
    Ok(seen)
}
