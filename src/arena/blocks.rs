//! Named blocks: allocate, find, look up, release and persist them, and the figures of the
//! heap and directory. Finding an existing name and dropping a reference that is not the last
//! take no lock (see the directory); creating and removing a name are transactions under the
//! arena lock.

use super::directory::{self, EntryInfo, Fast};
use super::header;
use super::heap::{self, HeapReport};
use super::layout as l;
use super::recycle;
use super::region::Mem;
use super::{page_size, Arena, Block, Held, Stats, ALL};
use crate::error::{Error, Result};
use std::collections::hash_map::Entry;
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
        let h = directory::checked_hash(name)?;
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
        let r = &self.region;
        let find_or_insert = |tx: &mut super::undo::Tx, missing: Option<(u64, u64)>| {
            let r = tx.region();
            let known_missing = missing.is_some_and(|(v, e)| directory::still_missing(r, h, v, e));
            let existing = if known_missing {
                None
            } else {
                directory::lookup_locked(tx, key, h)?
            };
            if let Some(e) = existing {
                let slot = directory::read_slot(r, e)?;
                let existing = slot.size();
                if existing != bytes {
                    return Err(Error::SizeMismatch {
                        name: name.into(),
                        existing,
                        requested: bytes,
                    });
                }
                let data = slot.data();
                if data % align != 0 {
                    return Err(Error::InvalidArgument(format!(
                        "block {name:?} exists at offset {data}, which is not {align}-byte aligned; \
                         every process must ask for it with the same alignment"
                    )));
                }
                let placed = slot.placed(r.geometry(), align)?;
                if let Some(generation) = directory::take_reference_now(r, e)? {
                    return Ok((e, generation, false, placed));
                }
                // Its last reference went meanwhile: remove it and make the name anew.
                let dead = directory::state(r, e)?.generation();
                directory::remove_dead(tx, e, dead)?;
            }
            let (e, generation, data) = directory::insert(tx, key, h, bytes, align)?;
            Ok((e, generation, true, (data, bytes)))
        };
        // An existing name without the lock. Anything unexpected (a size or alignment that
        // does not fit, damage, a race lost again and again) is decided under the lock
        // instead, where the errors are reported: the fast path ends with `None` for that.
        let decided = 'fast: {
            for _ in 0..4 {
                let slot = match directory::lookup_fast(r, key, h) {
                    Fast::Hit(slot) => slot,
                    // With several ranks on the same names, the holder of the lock is most
                    // often creating this very name: a waiter that sees the name's group
                    // change gives up the wait and looks again, so that it takes its reference
                    // without the lock instead of queueing behind the creator to find it.
                    Fast::Miss { version, extent } => {
                        let changed =
                            || (!directory::still_missing(r, h, version, extent)).then_some(());
                        let missing = Some((version, extent));
                        match self.locked_unless(changed, |tx| find_or_insert(tx, missing)) {
                            Ok(Err(())) => continue,
                            Ok(Ok(done)) => break 'fast Some(Ok(done)),
                            Err(e) => break 'fast Some(Err(e)),
                        }
                    }
                    // Often another process creating this very name: wait for it, then take a
                    // reference without the lock like everyone else.
                    Fast::Busy if directory::wait_for_chain(r, h) => continue,
                    Fast::Busy => break,
                };
                let Ok((data, size)) = slot.placed(r.geometry(), align) else {
                    break;
                };
                if size != bytes {
                    break;
                }
                let state = slot.state();
                if directory::take_reference(r, slot.at, state)? {
                    return self.hand_out(slot.at, state.generation(), data, size, false);
                }
            }
            None
        };
        let outcome = match decided {
            Some(outcome) => outcome,
            None => self.locked(|tx| find_or_insert(tx, None)),
        };
        let (entry, generation, created, (data, size)) = match outcome {
            // Parked blocks are merged back into the heap only when that may make room.
            Err(Error::OutOfSpace { .. }) if recycle::any(r)? => {
                self.coalesce()?;
                self.locked(|tx| find_or_insert(tx, None))
            }
            other => other,
        }?;
        self.hand_out(entry, generation, data, size, created)
    }

    /// Records a reference just taken and makes its Block. The reference is recorded after it
    /// was taken and forgotten (by `deallocate_offset`) before it is dropped, so that an entry
    /// of the map always names the generation its references belong to.
    #[inline(always)]
    fn hand_out(
        &self,
        entry: u64,
        generation: u32,
        data: u64,
        size: u64,
        created: bool,
    ) -> Result<Block<'_>> {
        let block = self.block(data, size, created)?;
        self.held
            .lock()
            .entry(data)
            .or_insert(Held {
                entry,
                generation,
                count: 0,
            })
            .count += 1;
        Ok(block)
    }

    /// The block `name` if it exists, taking one reference (release it with
    /// [`Arena::deallocate`]); never creates one.
    pub fn find(&self, name: &str) -> Result<Option<Block<'_>>> {
        let h = directory::checked_hash(name)?;
        let key = name.as_bytes();
        let r = &self.region;
        for _ in 0..4 {
            match directory::lookup_fast(r, key, h) {
                Fast::Miss { .. } => return Ok(None),
                Fast::Busy if directory::wait_for_chain(r, h) => continue,
                Fast::Busy => break,
                Fast::Hit(slot) => {
                    let Ok((data, size)) = slot.placed(r.geometry(), l::ALIGN) else {
                        break;
                    };
                    let state = slot.state();
                    if directory::take_reference(r, slot.at, state)? {
                        return self
                            .hand_out(slot.at, state.generation(), data, size, false)
                            .map(Some);
                    }
                }
            }
        }
        let found = self.locked(|tx| {
            let r = tx.region();
            let Some(e) = directory::lookup_locked(tx, key, h)? else {
                return Ok(None);
            };
            let data = directory::data_of(r, e, l::ALIGN)?;
            Ok(directory::take_reference_now(r, e)?.map(|generation| (e, generation, data)))
        })?;
        let Some((entry, generation, (data, size))) = found else {
            return Ok(None);
        };
        self.hand_out(entry, generation, data, size, false)
            .map(Some)
    }

    /// Information about block `name` without taking a reference (for inspection only).
    pub fn lookup(&self, name: &str) -> Result<Option<EntryInfo>> {
        let h = directory::checked_hash(name)?;
        let key = name.as_bytes();
        self.locked(|tx| match directory::lookup_locked(tx, key, h)? {
            Some(e) => Ok(Some(directory::read_entry(tx.region(), e)?)),
            None => Ok(None),
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
        // Forgotten here before it is dropped below (see `hand_out`): once the shared count
        // falls, another thread may make the name anew at this very offset.
        let mine = {
            let mut held = self.held.lock();
            let Entry::Occupied(mut mine) = held.entry(data) else {
                return Err(Error::NotHeld {
                    what: format!("the block at offset {data}"),
                    detail: "this process holds no reference to it (released already, or \
                             never allocated here); each allocate or find is released exactly \
                             once"
                        .into(),
                });
            };
            if self.region.load(mine.get().entry + l::E_DATA)? != data {
                return Err(Error::Corrupted(format!(
                    "the entry of the block at offset {data} changed while this process held it"
                )));
            }
            if mine.get().count <= 1 {
                mine.remove()
            } else {
                mine.get_mut().count -= 1;
                *mine.get()
            }
        };
        // Lock-free unless this was the last reference anywhere.
        if directory::drop_reference(&self.region, mine.entry, mine.generation)? {
            // If this fails (or the process dies first), the entry stays without references
            // until the next update that meets it removes it.
            self.locked(|tx| {
                directory::remove_dead(tx, mine.entry, mine.generation)?;
                directory::shrink(tx)
            })?;
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
            Some(h) if h.count > 1 => h.count -= 1,
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

    /// Gives the blocks of removed names that wait for reuse (small blocks are kept with their
    /// directory slot for the next name of their size: see `Stats`) back to the heap, merged
    /// with their free neighbours, like Umpire's `coalesce`. Allocation does this by itself
    /// when a block does not fit otherwise; call it before reading the heap's shape (the
    /// largest free block) or to hand the memory to blocks of other sizes. Takes the lock once
    /// per few blocks.
    pub fn coalesce(&self) -> Result<()> {
        // A few per update: each costs about 20 logged words of the log's 256.
        const PER_UPDATE: u64 = 6;
        let rounds = self.region.geometry().max_blocks() / PER_UPDATE + 1;
        for _ in 0..rounds {
            if self.locked(|tx| recycle::release(tx, PER_UPDATE))? < PER_UPDATE {
                return Ok(());
            }
        }
        Err(Error::Corrupted(
            "the parked-block lists do not end (a cycle?)".into(),
        ))
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

    /// Checks the heap, the directory and the parked blocks for consistency (under the lock);
    /// returns the heap counts.
    pub fn verify(&self) -> Result<HeapReport> {
        self.locked(|tx| {
            let mut report = heap::verify(tx.region())?;
            directory::verify(tx.region())?;
            let (blocks, bytes) = recycle::verify(tx.region())?;
            if blocks > report.used_blocks || bytes > report.used_bytes {
                return Err(Error::Corrupted(format!(
                    "{blocks} parked blocks of {bytes} bytes, but only {} blocks of {} bytes                      are in use",
                    report.used_blocks, report.used_bytes
                )));
            }
            report.used_blocks -= blocks;
            report.used_bytes -= bytes;
            report.parked_blocks = blocks;
            report.parked_bytes = bytes;
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
