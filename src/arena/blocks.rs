//! Named blocks: allocate, find, look up, release and persist them, and the figures of the
//! heap and directory. Every operation is one transaction under the arena lock.

use super::directory::{self, EntryInfo};
use super::header;
use super::heap::{self, HeapReport};
use super::layout as l;
use super::region::{Mem, Tx};
use super::{page_size, Arena, Block, Stats, ALL};
use crate::error::{Error, Result};
use std::time::Duration;

impl Arena {
    /// Returns the block `name` of `bytes` bytes aligned to 64 bytes, creating it (zeroed) if it
    /// does not exist; takes one reference. O(1) expected.
    ///
    /// Fails with `SizeMismatch` if the name exists with another size, `OutOfSpace` when it does
    /// not fit, `InvalidName`/`InvalidArgument` for a bad name or a size of 0.
    pub fn allocate(&self, name: &str, bytes: u64) -> Result<Block<'_>> {
        self.allocate_aligned(name, bytes, 64)
    }

    /// Like [`Arena::allocate`] with an explicit alignment: a power of two up to the page size.
    /// An existing block must already be that aligned.
    pub fn allocate_aligned(&self, name: &str, bytes: u64, align: u64) -> Result<Block<'_>> {
        directory::validate_name(name)?;
        if bytes == 0 {
            return Err(Error::InvalidArgument(format!(
                "block {name:?}: size 0; ask for at least 1 byte"
            )));
        }
        let page = page_size();
        if !align.is_power_of_two() || align > page {
            return Err(Error::InvalidArgument(format!(
                "block {name:?}: alignment {align} is not a power of two up to the page size {page}"
            )));
        }
        let align = align.max(l::ALIGN);
        let key = name.as_bytes();
        let h = directory::hash(key);
        let mut held = self.held.lock();
        let (entry, created) = self.locked(|tx| {
            let r = *tx.region();
            if let Some(e) = directory::lookup(&r, key, h)? {
                let existing = r.load(e + l::E_SIZE)?;
                if existing != bytes {
                    return Err(Error::SizeMismatch {
                        name: name.into(),
                        existing,
                        requested: bytes,
                    });
                }
                let data = r.load(e + l::E_DATA)?;
                if data % align != 0 {
                    return Err(Error::InvalidArgument(format!(
                        "block {name:?} exists at offset {data}, which is not {align}-byte aligned; \
                         every process must ask for it with the same alignment"
                    )));
                }
                directory::data_of(&r, e, align)?;
                take_reference(tx, e)?;
                Ok((e, false))
            } else {
                Ok((directory::insert(tx, key, h, bytes, align)?, true))
            }
        })?;
        let (data, size) = directory::data_of(&self.region, entry, align)?;
        let block = self.block(data, size, created)?;
        held.entry(data).or_insert((entry, 0)).1 += 1;
        Ok(block)
    }

    /// The block `name` if it exists, taking one reference (release it with
    /// [`Arena::deallocate`]); never creates one.
    pub fn find(&self, name: &str) -> Result<Option<Block<'_>>> {
        directory::validate_name(name)?;
        let key = name.as_bytes();
        let h = directory::hash(key);
        let mut held = self.held.lock();
        let found = self.locked(|tx| {
            let r = *tx.region();
            match directory::lookup(&r, key, h)? {
                Some(e) => {
                    let data = directory::data_of(&r, e, l::ALIGN)?;
                    take_reference(tx, e)?;
                    Ok(Some((e, data)))
                }
                None => Ok(None),
            }
        })?;
        let Some((entry, (data, size))) = found else {
            return Ok(None);
        };
        let block = self.block(data, size, false)?;
        held.entry(data).or_insert((entry, 0)).1 += 1;
        Ok(Some(block))
    }

    /// Information about block `name` without taking a reference (for inspection only).
    pub fn lookup(&self, name: &str) -> Result<Option<EntryInfo>> {
        directory::validate_name(name)?;
        let key = name.as_bytes();
        let h = directory::hash(key);
        self.locked(|tx| {
            let r = *tx.region();
            match directory::lookup(&r, key, h)? {
                Some(e) => Ok(Some(directory::read_entry(&r, e)?)),
                None => Ok(None),
            }
        })
    }

    fn block(&self, data: u64, bytes: u64, created: bool) -> Result<Block<'_>> {
        Ok(Block::new(
            self.region.ptr(data, bytes)?,
            bytes,
            data,
            created,
        ))
    }

    /// Drops one of this process's references to `block`; the last reference anywhere frees the
    /// block and its name.
    ///
    /// Fails with `NotHeld` when this process holds no reference to it (a block of another
    /// arena, or released more often than taken): nothing is changed then.
    pub fn deallocate(&self, block: Block<'_>) -> Result<()> {
        self.deallocate_offset(block.offset())
    }

    /// Like [`Arena::deallocate`], by the block's data pointer (for the C API).
    pub fn deallocate_ptr(&self, ptr: *const u8) -> Result<()> {
        let base = self.region.base().as_ptr() as usize;
        let addr = ptr as usize;
        if addr < base || addr >= base + self.region.len() as usize {
            return Err(Error::NotHeld {
                what: format!("pointer {ptr:p}"),
                detail: format!(
                    "it is not inside this arena ({:#x}..{:#x}); pass a pointer that allocate \
                     returned from this allocator",
                    base,
                    base + self.region.len() as usize
                ),
            });
        }
        self.deallocate_offset((addr - base) as u64)
    }

    pub(super) fn deallocate_offset(&self, data: u64) -> Result<()> {
        let mut held = self.held.lock();
        let Some(&(entry, count)) = held.get(&data) else {
            return Err(Error::NotHeld {
                what: format!("the block at offset {data}"),
                detail: "this process holds no reference to it (released already, or never \
                         allocated here); each allocate or find is released exactly once"
                    .into(),
            });
        };
        self.locked(|tx| {
            let r = *tx.region();
            if r.load(entry + l::E_DATA)? != data {
                return Err(Error::Corrupted(format!(
                    "the entry of the block at offset {data} changed while this process held it"
                )));
            }
            let refs = r.load(entry + l::E_REFCOUNT)?;
            if refs <= 1 {
                directory::remove(tx, entry)
            } else {
                tx.set(entry + l::E_REFCOUNT, refs - 1)
            }
        })?;
        if count <= 1 {
            held.remove(&data);
        } else {
            held.insert(data, (entry, count - 1));
        }
        Ok(())
    }

    /// Gives one of this process's references to `block` to the arena itself: the block then
    /// outlives this process (and its handle's drop) for as long as the arena exists. For
    /// publishing data in persistent arenas (`Unlink::Never`) that tools read later.
    ///
    /// Fails with `NotHeld` when this process holds no reference to it.
    pub fn persist(&self, block: Block<'_>) -> Result<()> {
        let mut held = self.held.lock();
        let data = block.offset();
        match held.get_mut(&data) {
            Some((_, count)) if *count > 1 => *count -= 1,
            Some(_) => {
                held.remove(&data);
            }
            None => {
                return Err(Error::NotHeld {
                    what: format!("the block at offset {data}"),
                    detail: "this process holds no reference to it to give away".into(),
                })
            }
        }
        Ok(())
    }

    /// Usage figures. Takes the lock briefly.
    pub fn stats(&self) -> Result<Stats> {
        self.locked(|tx| header::stats(tx.region()))
    }

    /// Bytes in use (Umpire's `getActualSize`): blocks with their metadata.
    pub fn actual_size(&self) -> Result<u64> {
        Ok(self.stats()?.used)
    }

    /// Every named block with its offset, size and total refcount.
    pub fn entries(&self) -> Result<Vec<EntryInfo>> {
        self.locked(|tx| Ok(directory::entries(tx.region(), ALL)?.0))
    }

    /// Checks the heap and directory for consistency (under the lock); returns the heap counts.
    pub fn verify(&self) -> Result<HeapReport> {
        self.locked(|tx| {
            let report = heap::verify(tx.region())?;
            directory::verify(tx.region())?;
            Ok(report)
        })
    }

    /// Test support: takes the arena lock, starts creating block `name` and stops halfway
    /// (some metadata words changed, the update not committed), calls `halted`, then sleeps
    /// forever. Tests kill the process at that point to check crash recovery.
    #[doc(hidden)]
    pub fn __halt_mid_update(&self, name: &str, bytes: u64, halted: impl FnOnce()) -> Result<()> {
        self.locked(|tx| {
            let key = name.as_bytes();
            directory::insert(tx, key, directory::hash(key), bytes, 64)?;
            halted();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        })
    }
}

/// Takes one more reference to entry `e` (the caller holds the lock).
fn take_reference(tx: &mut Tx, e: u64) -> Result<()> {
    let refs = tx.get(e + l::E_REFCOUNT)?;
    let more = refs.checked_add(1).filter(|_| refs > 0).ok_or_else(|| {
        Error::Corrupted(format!("entry at {e} has an impossible refcount {refs}"))
    })?;
    tx.set(e + l::E_REFCOUNT, more)
}
