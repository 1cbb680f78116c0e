//! Word access to a mapped arena by offset, and the undo log that makes every metadata update
//! either complete or undone, even when the process making it is killed halfway.
//!
//! All metadata words are read and written with atomic operations: other processes map the same
//! memory, so plain references into it would be data races in Rust's model. Writes under the
//! arena lock go through [`Tx`], which records the old value of each word in the in-arena undo log
//! before changing it; the next process to take the lock after a crash rolls the log back.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::arena::layout::{self, UNDO_CAPACITY};
use crate::error::{Error, Result};

/// A mapped arena: base address and length. Cheap to copy; valid while the mapping lives (the
/// owning [`crate::Arena`] guarantees that).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    base: NonNull<u8>,
    len: u64,
}

// SAFETY: a Region is an address range of a shared mapping; every access through it is atomic
// (metadata) or goes through raw pointers whose synchronisation is the caller's contract (user
// data). Sending or sharing the address between threads is therefore sound.
unsafe impl Send for Region {}
// SAFETY: see Send above.
unsafe impl Sync for Region {}

impl Region {
    /// # Safety
    /// `base..base+len` must be a live, readable and writable mapping for as long as this Region
    /// (or any copy) is used, aligned to 8 bytes.
    pub(crate) unsafe fn new(base: NonNull<u8>, len: u64) -> Self {
        Region { base, len }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Address of `off`, checked to lie inside the mapping with room for `size` bytes.
    fn at(&self, off: u64, size: u64) -> *mut u8 {
        assert!(
            off.checked_add(size).is_some_and(|end| end <= self.len),
            "nodeshm internal error: offset {off}+{size} outside the {}-byte arena",
            self.len
        );
        // SAFETY: off + size <= len was just checked, so the result stays inside the mapping.
        unsafe { self.base.as_ptr().add(off as usize) }
    }

    fn word(&self, off: u64) -> &AtomicU64 {
        debug_assert_eq!(off % 8, 0);
        // SAFETY: `at` checks bounds; the mapping is 8-aligned and every metadata offset is a
        // multiple of 8; AtomicU64 has the layout of u64 and atomic access to shared memory is
        // sound. The reference lives no longer than &self, within the mapping's life.
        unsafe { &*(self.at(off, 8) as *const AtomicU64) }
    }

    pub(crate) fn word32(&self, off: u64) -> &AtomicU32 {
        debug_assert_eq!(off % 4, 0);
        // SAFETY: as for `word`, with 4-byte alignment.
        unsafe { &*(self.at(off, 4) as *const AtomicU32) }
    }

    /// A bounds-checked load for walking metadata that may be changing or damaged (inspection
    /// without the lock): `None` instead of a panic for an offset outside the arena.
    pub(crate) fn get(&self, off: u64) -> Option<u64> {
        (off % 8 == 0 && off.checked_add(8).is_some_and(|e| e <= self.len)).then(|| self.load(off))
    }

    pub(crate) fn load(&self, off: u64) -> u64 {
        self.word(off).load(Ordering::Acquire)
    }

    /// A store that is not logged: for fields written before anyone else can see them (fresh
    /// blocks, header initialisation) or whose change never needs undoing (high-water marks).
    pub(crate) fn store(&self, off: u64, value: u64) {
        self.word(off).store(value, Ordering::Release)
    }

    pub(crate) fn fetch_max(&self, off: u64, value: u64) {
        self.word(off).fetch_max(value, Ordering::AcqRel);
    }

    /// Copies bytes out of the arena.
    pub(crate) fn read_bytes(&self, off: u64, out: &mut [u8]) {
        let src = self.at(off, out.len() as u64);
        // SAFETY: `at` checked the range; the destination is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) }
    }

    /// Copies bytes into the arena (only into memory no other process can reach yet).
    pub(crate) fn write_bytes(&self, off: u64, bytes: &[u8]) {
        let dst = self.at(off, bytes.len() as u64);
        // SAFETY: `at` checked the range; the caller writes only fresh, unpublished memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
    }

    /// Zeroes `len` bytes at `off` (fresh, unpublished memory only).
    pub(crate) fn zero(&self, off: u64, len: u64) {
        let dst = self.at(off, len);
        // SAFETY: `at` checked the range; the caller zeroes only memory it just took from the heap.
        unsafe { std::ptr::write_bytes(dst, 0, len as usize) }
    }

    /// Raw pointer to `off` for handing user blocks out.
    pub(crate) fn ptr(&self, off: u64, len: u64) -> NonNull<u8> {
        NonNull::new(self.at(off, len)).expect("mapping base is non-null")
    }

    /// Undoes an interrupted transaction left by a process that died holding the lock. Must be
    /// called with the arena lock held. Idempotent: a recoverer that dies too is simply redone.
    pub(crate) fn roll_back(&self) -> u64 {
        let len = self.load(layout::UNDO_LEN).min(UNDO_CAPACITY);
        for i in (0..len).rev() {
            let entry = layout::UNDO_ENTRIES + i * 16;
            let off = self.load(entry);
            let old = self.load(entry + 8);
            if off + 8 <= self.len && off % 8 == 0 {
                self.store(off, old);
            }
        }
        self.store(layout::UNDO_LEN, 0);
        len
    }
}

/// One metadata update under the arena lock. Every [`Tx::set`] is logged first; [`Tx::commit`]
/// clears the log. Dropping a Tx without committing rolls it back (an error path inside an update).
pub(crate) struct Tx<'r> {
    region: &'r Region,
    len: u64,
    /// Tests: stop logging-and-writing after this many writes, as a killed process would.
    #[cfg(test)]
    pub(crate) limit: Option<u64>,
}

impl<'r> Tx<'r> {
    /// Starts an update. The caller holds the arena lock (so the log is empty).
    pub(crate) fn begin(region: &'r Region) -> Self {
        debug_assert_eq!(region.load(layout::UNDO_LEN), 0);
        Tx {
            region,
            len: 0,
            #[cfg(test)]
            limit: None,
        }
    }

    pub(crate) fn region(&self) -> &'r Region {
        self.region
    }

    pub(crate) fn get(&self, off: u64) -> u64 {
        self.region.load(off)
    }

    /// Logs the old value of the word at `off`, then writes `value`.
    pub(crate) fn set(&mut self, off: u64, value: u64) -> Result<()> {
        // Logged even when unchanged: the caller may overwrite the word later without logging
        // (fresh block payloads), and a rollback must still put this value back.
        let old = self.region.load(off);
        #[cfg(test)]
        if self.limit.is_some_and(|l| self.len >= l) {
            return Err(Error::Corrupted("test: simulated crash".into()));
        }
        if self.len == UNDO_CAPACITY {
            return Err(Error::Corrupted(format!(
                "internal: one update changed more than {UNDO_CAPACITY} metadata words"
            )));
        }
        let entry = layout::UNDO_ENTRIES + self.len * 16;
        self.region.store(entry, off);
        self.region.store(entry + 8, old);
        self.len += 1;
        // Release stores keep program order: entry, then length, then the word itself, so a
        // process killed between any two of them leaves a log that undoes exactly what happened.
        self.region.store(layout::UNDO_LEN, self.len);
        self.region.store(off, value);
        Ok(())
    }

    /// Makes the update permanent.
    pub(crate) fn commit(mut self) {
        self.region.store(layout::UNDO_LEN, 0);
        self.len = 0;
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.len > 0 {
            self.region.roll_back();
        }
    }
}
