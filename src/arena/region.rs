//! Word access to an arena by offset. The undo log that makes every metadata update either
//! complete or undone, written through these accessors, is in `undo.rs`.
//!
//! Nothing read from an arena is trusted: another process (or damage) may have written anything
//! there. So every access is bounds-checked and fails with `Corrupted` instead of panicking, the
//! geometry (where the directory and the heap lie) is read and checked once and then kept, and
//! every update may only write words inside the ranges an update can change (the heap metadata,
//! the directory and the heap: never the locks, the geometry or the log itself).
//!
//! All metadata words are read and written with atomic operations: other processes map the same
//! memory, so plain references into it would be data races in Rust's model. Writes under the
//! arena lock go through [`Tx`](super::undo::Tx), which records the old value of each word in
//! the in-arena undo log before changing it; the next process to take the lock after a crash
//! rolls the log back.
//!
//! The accessors that every update and lookup calls are `#[inline(always)]`, as are the steps
//! of the heap, the directory and the park lists on a named allocation's path: their
//! `Result<_, Error>` is large, so out of line each call saved registers and passed its
//! result through memory, about a sixth of a new name's instructions (callgrind: 2,992 ->
//! 2,232 per new name with the other changes of 2026-12-06; README, Performance).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::arena::layout::{self as l, Geometry, UNDO_CAPACITY};
use crate::error::{Error, Result};

/// Read access to an arena's bytes, by offset: the live mapping ([`Region`]) or a file read
/// with `pread` (inspection by tools). Every walker of the layout reads through this, so the
/// library and the command line share one bounded, checked implementation.
pub(crate) trait Mem {
    /// Size of the arena in bytes.
    fn len(&self) -> u64;
    /// The checked geometry.
    fn geometry(&self) -> &Geometry;
    /// Copies `out.len()` bytes at `off`; `Corrupted` when the range leaves the arena.
    fn read_bytes(&self, off: u64, out: &mut [u8]) -> Result<()>;
    /// The 8-byte word at `off` (a multiple of 8).
    fn load(&self, off: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_bytes(off, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }
    /// The `out.len()` consecutive 8-byte words at `off`, bounds-checked once (a directory
    /// slot is read whole this way: one check instead of one per field).
    fn words(&self, off: u64, out: &mut [u64]) -> Result<()> {
        self.read_bytes(off, bytemuck::cast_slice_mut(out))
    }
    /// The 4-byte word at `off`.
    fn load32(&self, off: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_bytes(off, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }
}

/// The error for an access outside the arena.
pub(crate) fn outside(off: u64, n: u64, len: u64) -> Error {
    Error::Corrupted(format!(
        "offset {off} (+{n} bytes) lies outside the {len}-byte arena"
    ))
}

/// A mapped arena: base address, length and checked geometry. Cheap to copy; valid while the
/// mapping lives (the owning [`crate::Arena`] guarantees that).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    base: NonNull<u8>,
    len: u64,
    geo: Geometry,
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
    /// (or any copy) is used, aligned to 8 bytes, and at least `HEADER_SIZE` bytes long.
    pub(crate) unsafe fn new(base: NonNull<u8>, len: u64, geo: Geometry) -> Self {
        debug_assert!(len >= l::HEADER_SIZE);
        Region { base, len, geo }
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Address of `off`, checked to lie inside the mapping with room for `size` bytes.
    #[inline(always)]
    fn at(&self, off: u64, size: u64) -> Result<*mut u8> {
        if off.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(outside(off, size, self.len));
        }
        // SAFETY: off + size <= len was just checked, so the result stays inside the mapping.
        Ok(unsafe { self.base.as_ptr().add(off as usize) })
    }

    #[inline(always)]
    fn word(&self, off: u64) -> Result<&AtomicU64> {
        Ok(&self.words_at(off, 1)?[0])
    }

    /// The `n` consecutive words from `off` as atomics, checked once: aligned, and all inside
    /// the mapping.
    #[inline(always)]
    fn words_at(&self, off: u64, n: usize) -> Result<&[AtomicU64]> {
        self.word_span(off, n).ok_or_else(|| self.bad_span(off, n))
    }

    /// [`Region::words_at`] without the error: the one check (aligned, inside the mapping)
    /// behind every word access, checked or lock-free ([`Region::peek`]).
    #[inline(always)]
    fn word_span(&self, off: u64, n: usize) -> Option<&[AtomicU64]> {
        let bytes = n as u64 * 8;
        if off % 8 != 0 || off.checked_add(bytes).is_none_or(|end| end > self.len) {
            return None;
        }
        // SAFETY: the `n` words at `off` lie inside the mapping (checked above); the mapping
        // is 8-aligned and `off` is a multiple of 8; AtomicU64 has the layout of u64 and atomic
        // access to shared memory is sound. The slice lives no longer than &self, within the
        // mapping's life.
        Some(unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(off as usize) as *const AtomicU64, n)
        })
    }

    #[cold]
    #[inline(never)]
    fn bad_span(&self, off: u64, n: usize) -> Error {
        if off % 8 != 0 {
            Error::Corrupted(format!("offset {off} is not word-aligned"))
        } else {
            outside(off, n as u64 * 8, self.len)
        }
    }

    /// A 4-byte header field (`off` is one of layout.rs's constants, inside the header that
    /// every Region has).
    pub(crate) fn word32(&self, off: u64) -> &AtomicU32 {
        assert!(
            off % 4 == 0 && off + 4 <= l::HEADER_SIZE,
            "header field offset {off}"
        );
        // SAFETY: `off + 4 <= HEADER_SIZE <= len` (asserted above and required by `new`), the
        // mapping is 8-aligned and `off` a multiple of 4; atomic access to shared memory.
        unsafe { &*(self.base.as_ptr().add(off as usize) as *const AtomicU32) }
    }

    /// The 8-byte header word at `off` (one of layout.rs's constants, inside the header that
    /// every Region has), for atomic read-modify-write.
    #[inline]
    pub(crate) fn header_word(&self, off: u64) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 8 <= l::HEADER_SIZE,
            "header field offset {off}"
        );
        // SAFETY: `off + 8 <= HEADER_SIZE <= len` (asserted above and required by `new`), the
        // mapping is 8-aligned and `off` a multiple of 8; atomic access to shared memory.
        unsafe { &*(self.base.as_ptr().add(off as usize) as *const AtomicU64) }
    }

    /// The `n` header words from `off` (inside the header that every Region has), in place.
    #[inline]
    pub(crate) fn header_words(&self, off: u64, n: usize) -> &[AtomicU64] {
        assert!(
            off % 8 == 0 && off + n as u64 * 8 <= l::HEADER_SIZE,
            "header words {off} (+{n})"
        );
        // SAFETY: `off + 8n <= HEADER_SIZE <= len` (asserted above and required by `new`), the
        // mapping is 8-aligned and `off` a multiple of 8; atomic access to shared memory, the
        // slice living no longer than &self.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(off as usize) as *const AtomicU64, n)
        }
    }

    /// Undo log entry `i` (below `UNDO_CAPACITY`): its offset and old-value words.
    #[inline]
    pub(super) fn undo_entry(&self, i: u64) -> [&AtomicU64; 2] {
        assert!(i < UNDO_CAPACITY, "undo log entry {i}");
        let entry = l::UNDO_ENTRIES + i * 16;
        // SAFETY: the log lies inside the header, which every Region has (see `new`); entries
        // are 8-aligned (the header is repr(C) of u64 arrays); atomic access to shared memory.
        unsafe {
            let p = self.base.as_ptr().add(entry as usize) as *const AtomicU64;
            [&*p, &*p.add(1)]
        }
    }

    /// The version of directory group `group` (see [`l::GROUP_WORDS`]), taken modulo the
    /// number of groups.
    #[inline]
    pub(crate) fn version(&self, group: u64) -> &AtomicU64 {
        let g = &self.geo;
        let off = g.buckets_offset + (group & (g.groups() - 1)) * l::GROUP_WORDS * 8;
        debug_assert!(off + 8 <= self.len);
        // SAFETY: the geometry was checked (`Geometry::read`, or made by `create`) for this
        // mapping's size: the directory's `bucket_count` words (a power of two, at least one
        // group) start at a multiple of 64 and end before the heap, inside the mapping; `off`
        // is the first word of one of its groups. Atomic access to shared memory, the
        // reference living no longer than &self.
        unsafe { &*(self.base.as_ptr().add(off as usize) as *const AtomicU64) }
    }

    /// Moves the version of `group` on by one. Only the lock holder writes versions, so a
    /// load and a store do (no read-modify-write: that would cost an atomic instruction twice
    /// per update). The release fence orders the store before the update's writes that follow
    /// (when it makes the version odd); the release store orders the update's writes before it
    /// (when it makes the version even again): a seqlock writer's two halves.
    #[inline]
    pub(crate) fn bump_version(&self, group: u64) {
        let v = self.version(group);
        v.store(v.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
        std::sync::atomic::fence(Ordering::Release);
    }

    /// Makes every directory version even again after a recovery rolled back an update whose
    /// process died with some odd; the new values differ from every one read before. Under the
    /// lock.
    pub(crate) fn settle_version(&self) {
        for group in 0..self.geo.groups() {
            if self.version(group).load(Ordering::Acquire) & 1 == 1 {
                self.bump_version(group);
            }
        }
    }

    /// The `N` consecutive words at `off`, for a lock-free reader that leaves anything doubtful
    /// to the lock: `None` (and no error built, which would cost the hot path its registers)
    /// unless they are word-aligned and inside the mapping. The locked path reads the same
    /// words through [`Mem`] and reports what is wrong.
    #[inline]
    pub(crate) fn peek<const N: usize>(&self, off: u64) -> Option<[u64; N]> {
        let words = self.word_span(off, N)?;
        Some(std::array::from_fn(|i| words[i].load(Ordering::Acquire)))
    }

    /// A word inside the heap (a slot's state), for compare-and-swap by lock-free operations;
    /// `Corrupted` outside the heap or unaligned.
    #[inline]
    pub(crate) fn heap_word(&self, off: u64) -> Result<&AtomicU64> {
        let g = &self.geo;
        if off < g.heap_offset || off.checked_add(8).is_none_or(|e| e > g.heap_end) {
            return Err(outside(off, 8, self.len));
        }
        self.word(off)
    }

    /// The atomic word at header offset `off` (inside the header every Region has); `None` for
    /// an offset outside it or not word-aligned.
    pub(crate) fn atomic_header(&self, off: u64) -> Option<&AtomicU64> {
        (off % 8 == 0 && off + 8 <= l::HEADER_SIZE)
            .then(|| self.word(off).ok())
            .flatten()
    }

    /// A header word (`off` is one of layout.rs's constants): cannot fail.
    pub(crate) fn header(&self, off: u64) -> u64 {
        assert!(
            off % 8 == 0 && off + 8 <= l::HEADER_SIZE,
            "header field offset {off}"
        );
        self.word(off).map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// A store that is not logged: for fields written before anyone else can see them (fresh
    /// blocks, header initialisation) or whose change never needs undoing (high-water marks).
    #[inline(always)]
    pub(crate) fn store(&self, off: u64, value: u64) -> Result<()> {
        self.word(off)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Unlogged stores of consecutive words from `off` (a fresh slot's fields), bounds-checked
    /// once.
    #[inline(always)]
    pub(crate) fn store_words(&self, off: u64, values: &[u64]) -> Result<()> {
        for (word, &v) in self.words_at(off, values.len())?.iter().zip(values) {
            word.store(v, Ordering::Release);
        }
        Ok(())
    }

    /// Raises the word at `off` to `value` if it is below: a load and a store, not a
    /// read-modify-write, for the marks only the holder of the arena lock writes (the high
    /// water mark, the pristine mark); a reader without the lock sees the old or the new value.
    #[inline(always)]
    pub(crate) fn raise(&self, off: u64, value: u64) -> Result<()> {
        let word = self.word(off)?;
        if word.load(Ordering::Acquire) < value {
            word.store(value, Ordering::Release);
        }
        Ok(())
    }

    /// Asks the processor to bring the `lines` cache lines from `off` close: a hint for memory
    /// an update will soon touch (the next parked slot and block, the slots a split or a merge
    /// walks), which changes nothing and cannot fault. Offsets outside the mapping are
    /// skipped; on other architectures than x86-64 it does nothing. The write-intent hint
    /// compiles to a plain `prefetcht0` unless the build enables `prfchw`; a `prefetchw` by
    /// inline assembly measured the same (alternated 2-rank jobs), so it stays the intrinsic.
    #[inline]
    pub(crate) fn prefetch_write(&self, off: u64, lines: u64) {
        let Some(bytes) = lines.checked_mul(64) else {
            return;
        };
        if off.checked_add(bytes).is_none_or(|end| end > self.len) {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        for line in 0..lines {
            // SAFETY: `off + lines * 64 <= len` was checked, so the address lies inside the
            // mapping; a prefetch only hints the cache and never faults or changes memory.
            unsafe {
                let at = self.base.as_ptr().add((off + line * 64) as usize);
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(
                    at.cast::<i8>(),
                );
            }
        }
    }

    /// Copies bytes into the arena (only into memory no other process can reach yet).
    #[inline(always)]
    pub(crate) fn write_bytes(&self, off: u64, bytes: &[u8]) -> Result<()> {
        let dst = self.at(off, bytes.len() as u64)?;
        // SAFETY: `at` checked the range; the caller writes only fresh, unpublished memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        Ok(())
    }

    /// Zeroes `len` bytes at `off` (fresh, unpublished memory only).
    #[inline(always)]
    pub(crate) fn zero(&self, off: u64, len: u64) -> Result<()> {
        let dst = self.at(off, len)?;
        // SAFETY: `at` checked the range; the caller zeroes only memory it just took from the heap.
        unsafe { std::ptr::write_bytes(dst, 0, len as usize) };
        Ok(())
    }

    /// Raw pointer to `off` for handing user blocks out.
    pub(crate) fn ptr(&self, off: u64, len: u64) -> Result<NonNull<u8>> {
        Ok(NonNull::new(self.at(off, len)?).expect("mapping base is non-null"))
    }

    /// Whether an update may change the word at `off`: heap metadata, directory or heap.
    #[inline(always)]
    pub(crate) fn writable(&self, off: u64) -> bool {
        off % 8 == 0 && self.geo.writable(off)
    }

    /// The word at `off` if an update may change it ([`Region::writable`]): one check for
    /// both that and the bounds.
    #[inline(always)]
    pub(super) fn writable_word(&self, off: u64) -> Option<&AtomicU64> {
        if !self.writable(off) || off + 8 > self.len {
            return None;
        }
        // SAFETY: `off + 8 <= len` (checked; `writable` bounds `off` by the heap's end, so the
        // sum cannot overflow) and `off` is a multiple of 8 in an 8-aligned mapping; atomic
        // access to shared memory, the reference living no longer than &self.
        Some(unsafe { &*(self.base.as_ptr().add(off as usize) as *const AtomicU64) })
    }
}

impl Mem for Region {
    fn len(&self) -> u64 {
        self.len
    }

    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    fn read_bytes(&self, off: u64, out: &mut [u8]) -> Result<()> {
        let src = self.at(off, out.len() as u64)?;
        // SAFETY: `at` checked the range; the destination is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    #[inline(always)]
    fn load(&self, off: u64) -> Result<u64> {
        Ok(self.word(off)?.load(Ordering::Acquire))
    }

    #[inline]
    fn words(&self, off: u64, out: &mut [u64]) -> Result<()> {
        let words = self.words_at(off, out.len())?;
        for (i, w) in out.iter_mut().enumerate() {
            *w = words[i].load(Ordering::Acquire);
        }
        Ok(())
    }

    fn load32(&self, off: u64) -> Result<u32> {
        if off % 4 != 0 {
            return Err(Error::Corrupted(format!(
                "offset {off} is not word-aligned"
            )));
        }
        let p = self.at(off, 4)?;
        // SAFETY: bounds checked by `at`, 4-aligned (the mapping is 8-aligned); atomic access
        // to shared memory; the reference does not outlive this call.
        Ok(unsafe { &*(p as *const AtomicU32) }.load(Ordering::Acquire))
    }
}
