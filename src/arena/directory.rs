//! The name directory: a fixed array of buckets, each the head of a chain of entries. An entry
//! sits at the start of its own heap block, followed by the name and then the user's data, so a
//! named allocation is one heap allocation and lookups are O(1) expected.

use crate::arena::heap;
use crate::arena::layout::{self as l, round_up, ENTRY_SIZE};
use crate::arena::region::{Region, Tx};
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

fn bucket_of(r: &Region, h: u64) -> u64 {
    r.load(l::BUCKETS) + (h & (r.load(l::BUCKET_COUNT) - 1)) * 8
}

fn name_matches(r: &Region, entry: u64, name: &[u8]) -> bool {
    if r.load(entry + l::E_NAME_LEN) != name.len() as u64 {
        return false;
    }
    let mut stored = [0u8; MAX_NAME_LEN];
    r.read_bytes(entry + ENTRY_SIZE, &mut stored[..name.len()]);
    &stored[..name.len()] == name
}

/// The entry for `name`, if any.
pub(crate) fn lookup(r: &Region, name: &[u8], h: u64) -> Option<u64> {
    let mut e = r.load(bucket_of(r, h));
    while e != 0 {
        if r.load(e + l::E_HASH) == h && name_matches(r, e, name) {
            return Some(e);
        }
        e = r.load(e + l::E_NEXT);
    }
    None
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
    r.store(entry + l::E_NEXT, tx.get(bucket));
    r.store(entry + l::E_HASH, h);
    r.store(entry + l::E_DATA, data);
    r.store(entry + l::E_SIZE, bytes);
    r.store(entry + l::E_REFCOUNT, 1);
    r.store(entry + l::E_NAME_LEN, name.len() as u64);
    r.write_bytes(entry + ENTRY_SIZE, name);
    tx.set(bucket, entry)?;
    tx.set(l::LIVE_BLOCKS, tx.get(l::LIVE_BLOCKS) + 1)?;
    tx.set(l::REQUESTED, tx.get(l::REQUESTED) + bytes)?;
    Ok(entry)
}

/// Unlinks `entry` from its chain and frees its block.
pub(crate) fn remove(tx: &mut Tx, entry: u64) -> Result<()> {
    let r = *tx.region();
    let bucket = bucket_of(&r, r.load(entry + l::E_HASH));
    let mut link = bucket;
    loop {
        let e = r.load(link);
        if e == 0 {
            return Err(Error::Corrupted(format!(
                "entry at offset {entry} is missing from its bucket chain"
            )));
        }
        if e == entry {
            break;
        }
        link = e + l::E_NEXT;
    }
    tx.set(link, r.load(entry + l::E_NEXT))?;
    tx.set(l::LIVE_BLOCKS, tx.get(l::LIVE_BLOCKS) - 1)?;
    tx.set(
        l::REQUESTED,
        tx.get(l::REQUESTED) - r.load(entry + l::E_SIZE),
    )?;
    heap::free(tx, entry)
}

/// One named block as the directory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
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

pub(crate) fn read_entry(r: &Region, e: u64) -> EntryInfo {
    let len = (r.load(e + l::E_NAME_LEN) as usize).min(MAX_NAME_LEN);
    let mut name = vec![0u8; len];
    r.read_bytes(e + ENTRY_SIZE, &mut name);
    EntryInfo {
        name: String::from_utf8_lossy(&name).into_owned(),
        offset: r.load(e + l::E_DATA),
        size: r.load(e + l::E_SIZE),
        refcount: r.load(e + l::E_REFCOUNT),
    }
}

/// Every entry, in bucket order. Cost: O(buckets + entries).
pub(crate) fn entries(r: &Region) -> Vec<EntryInfo> {
    let mut out = Vec::with_capacity(r.load(l::LIVE_BLOCKS) as usize);
    let buckets = r.load(l::BUCKETS);
    for i in 0..r.load(l::BUCKET_COUNT) {
        let mut e = r.load(buckets + i * 8);
        while e != 0 {
            out.push(read_entry(r, e));
            e = r.load(e + l::E_NEXT);
        }
    }
    out
}

/// Checks that every entry is inside the heap, in the right bucket, and counted.
pub(crate) fn verify(r: &Region) -> Result<u64> {
    let (start, end) = (r.load(l::HEAP_OFFSET), r.load(l::HEAP_END));
    let buckets = r.load(l::BUCKETS);
    let count = r.load(l::BUCKET_COUNT);
    let live = r.load(l::LIVE_BLOCKS);
    let mut seen = 0u64;
    let mut requested = 0u64;
    for i in 0..count {
        let mut e = r.load(buckets + i * 8);
        while e != 0 {
            if e < start || e + ENTRY_SIZE > end || e % l::ALIGN != 0 {
                return Err(Error::Corrupted(format!("bucket {i} links to offset {e}")));
            }
            let info = read_entry(r, e);
            if hash(info.name.as_bytes()) & (count - 1) != i || info.refcount == 0 {
                return Err(Error::Corrupted(format!(
                    "entry {:?} is misfiled or unowned",
                    info.name
                )));
            }
            if info.offset + info.size > end {
                return Err(Error::Corrupted(format!(
                    "entry {:?} overruns the heap",
                    info.name
                )));
            }
            seen += 1;
            requested += info.size;
            if seen > live {
                return Err(Error::Corrupted(format!(
                    "more entries than the {live} counted"
                )));
            }
            e = r.load(e + l::E_NEXT);
        }
    }
    if seen != live || requested != r.load(l::REQUESTED) {
        return Err(Error::Corrupted(format!(
            "{seen} entries of {requested} bytes, counters say {live} and {}",
            r.load(l::REQUESTED)
        )));
    }
    Ok(seen)
}
