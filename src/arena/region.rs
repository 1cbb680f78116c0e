//! Word access to an arena by offset, and the undo log that makes every metadata update either
//! complete or undone, even when the process making it is killed halfway.
//!
//! Nothing read from an arena is trusted: another process (or damage) may have written anything
//! there. So every access is bounds-checked and fails with `Corrupted` instead of panicking, the
//! geometry (where the directory and the heap lie) is read and checked once and then kept, and
//! every update may only write words inside the ranges an update can change (the heap metadata,
//! the directory and the heap: never the locks, the geometry or the log itself).
//!
//! All metadata words are read and written with atomic operations: other processes map the same
//! memory, so plain references into it would be data races in Rust's model. Writes under the
//! arena lock go through [`Tx`], which records the old value of each word in the in-arena undo log
//! before changing it; the next process to take the lock after a crash rolls the log back.
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

    /// Undo log entry `i` (below `UNDO_CAPACITY`): its offset and old-value words.
    #[inline]
    fn undo_entry(&self, i: u64) -> [&AtomicU64; 2] {
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

    /// Asks the processor to bring the `lines` cache lines from `off` close, for writing: a
    /// hint for memory an update will soon touch (the next parked slot and block, the slots a
    /// split or a merge walks), which changes nothing and cannot fault. Offsets outside the
    /// mapping are skipped; on other architectures than x86-64 it does nothing.
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
    fn writable_word(&self, off: u64) -> Option<&AtomicU64> {
        if !self.writable(off) || off + 8 > self.len {
            return None;
        }
        // SAFETY: `off + 8 <= len` (checked; `writable` bounds `off` by the heap's end, so the
        // sum cannot overflow) and `off` is a multiple of 8 in an 8-aligned mapping; atomic
        // access to shared memory, the reference living no longer than &self.
        Some(unsafe { &*(self.base.as_ptr().add(off as usize) as *const AtomicU64) })
    }

    /// Undoes an interrupted transaction left by a process that died holding the lock. Must be
    /// called with the arena lock held. Idempotent: a recoverer that dies too is simply redone.
    /// Every entry is checked before any is applied: a log that would write outside what an
    /// update can change (the locks, the geometry) is damage, reported as `Corrupted`.
    pub(crate) fn roll_back(&self) -> Result<u64> {
        let len = self.header(l::UNDO_LEN);
        if len > UNDO_CAPACITY {
            return Err(Error::Corrupted(format!(
                "the undo log claims {len} entries; it holds at most {UNDO_CAPACITY}"
            )));
        }
        let mut entries = Vec::with_capacity(len as usize);
        for i in 0..len {
            let entry = l::UNDO_ENTRIES + i * 16;
            let (off, old) = (self.header(entry), self.header(entry + 8));
            if !self.writable(off) {
                return Err(Error::Corrupted(format!(
                    "undo log entry {i} would restore offset {off}, which no update changes"
                )));
            }
            entries.push((off, old));
        }
        for &(off, old) in entries.iter().rev() {
            self.store(off, old)?;
        }
        self.store(l::UNDO_LEN, 0)?;
        Ok(len)
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

/// Figures that updates keep up to date outside the undo log: a recovery recounts them from
/// the directory and the park lists instead (see `lock::recover`), so that the common update
/// logs only the links it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Entries on the directory's chains.
    LiveBlocks,
    /// Sum of their sizes.
    Requested,
    /// Heap bytes of the parked blocks.
    ParkedBytes,
}

impl Counter {
    const ALL: [Counter; 3] = [
        Counter::LiveBlocks,
        Counter::Requested,
        Counter::ParkedBytes,
    ];

    fn offset(self) -> u64 {
        match self {
            Counter::LiveBlocks => l::LIVE_BLOCKS,
            Counter::Requested => l::REQUESTED,
            Counter::ParkedBytes => l::PARKED_BYTES,
        }
    }
}

/// One metadata update under the arena lock. Every [`Tx::set`] is logged first; [`Tx::commit`]
/// clears the log. Dropping a Tx without committing rolls it back (an error path inside an update).
pub(crate) struct Tx<'r> {
    region: &'r Region,
    len: u64,
    /// What this update adds to each [`Counter`] (wrapping), applied at commit.
    deltas: [u64; 3],
    /// Directory groups whose version this update made odd (the chains it changes), made
    /// even at its end.
    touched: [u64; 8],
    touched_len: usize,
    /// A slot whose new generation becomes visible to lock-free readers at commit.
    publish: Option<u64>,
    /// Tests: stop logging-and-writing after this many writes, as a killed process would.
    #[cfg(test)]
    pub(crate) limit: Option<u64>,
}

impl<'r> Tx<'r> {
    /// Starts an update. The caller holds the arena lock (so the log is empty).
    pub(crate) fn begin(region: &'r Region) -> Self {
        Tx {
            region,
            len: 0,
            deltas: [0; 3],
            touched: [0; 8],
            touched_len: 0,
            publish: None,
            #[cfg(test)]
            limit: None,
        }
    }

    pub(crate) fn region(&self) -> &'r Region {
        self.region
    }

    #[inline(always)]
    pub(crate) fn get(&self, off: u64) -> Result<u64> {
        self.region.load(off)
    }

    /// Logs the old value of the word at `off`, then writes `value`. Refuses words no update
    /// may change (damaged metadata pointing at the locks or the header).
    #[inline(always)]
    pub(crate) fn set(&mut self, off: u64, value: u64) -> Result<()> {
        let len = self.len;
        let Some(word) = self.region.writable_word(off) else {
            return Err(self.refusal(off));
        };
        if len >= UNDO_CAPACITY {
            return Err(self.refusal(off));
        }
        // Logged even when unchanged: the caller may overwrite the word later without logging
        // (fresh block payloads), and a rollback must still put this value back.
        let old = word.load(Ordering::Acquire);
        #[cfg(test)]
        if self.limit.is_some_and(|l| len >= l) {
            return Err(Error::Corrupted("test: simulated crash".into()));
        }
        let [log_off, log_old] = self.region.undo_entry(len);
        log_off.store(off, Ordering::Release);
        log_old.store(old, Ordering::Release);
        self.len = len + 1;
        // Release stores keep program order: entry, then length, then the word itself, so a
        // process killed between any two of them leaves a log that undoes exactly what happened.
        self.region
            .header_word(l::UNDO_LEN)
            .store(len + 1, Ordering::Release);
        word.store(value, Ordering::Release);
        Ok(())
    }

    #[cold]
    fn refusal(&self, off: u64) -> Error {
        if self.len >= UNDO_CAPACITY {
            Error::Corrupted(format!(
                "internal: one update changed more than {UNDO_CAPACITY} metadata words"
            ))
        } else {
            Error::Corrupted(format!(
                "an update would write offset {off}, outside the heap metadata, directory and \
                 heap"
            ))
        }
    }

    /// Adds `delta` (wrapping: subtract with `wrapping_neg`) to `counter` when the update
    /// commits; nothing if it is rolled back.
    pub(crate) fn count(&mut self, counter: Counter, delta: u64) {
        let d = &mut self.deltas[counter as usize];
        *d = d.wrapping_add(delta);
    }

    /// Marks the chains of directory group `group` (below `Geometry::groups`, as
    /// `directory::group_of` gives it) as being changed, before the first change to them:
    /// lock-free readers that started earlier see the version move and do not trust what they
    /// read meanwhile.
    #[inline(always)]
    pub(crate) fn touch(&mut self, group: u64) -> Result<()> {
        if self.touched[..self.touched_len].contains(&group) {
            return Ok(());
        }
        if self.touched_len == self.touched.len() {
            return Err(Error::Corrupted(
                "internal: one update changed more than 8 directory groups".into(),
            ));
        }
        self.region.bump_version(group);
        self.touched[self.touched_len] = group;
        self.touched_len += 1;
        Ok(())
    }

    /// Clears the pending flag of `state_off` (a slot's state word) once the update is
    /// committed: until then lock-free readers leave the new entry alone, since a rollback
    /// would take it away again.
    pub(crate) fn publish_at_commit(&mut self, state_off: u64) {
        self.publish = Some(state_off);
    }

    /// Makes the update permanent.
    #[inline(always)]
    pub(crate) fn commit(mut self) {
        let _ = self.region.store(l::UNDO_LEN, 0);
        self.len = 0;
        // After the commit point: a process killed before these stores leaves stale counters,
        // which the recovery that its death triggers recounts.
        for counter in Counter::ALL {
            let delta = self.deltas[counter as usize];
            if delta != 0 {
                let word = self.region.header_word(counter.offset());
                word.store(
                    word.load(Ordering::Acquire).wrapping_add(delta),
                    Ordering::Release,
                );
            }
        }
        if let Some(off) = self.publish.take() {
            if let Ok(state) = self.region.heap_word(off) {
                // A load and a store, not a read-modify-write: nothing else changes a pending
                // state word (lock-free readers leave pending entries alone, and a reader's
                // compare-and-swap from an older generation fails on it).
                let pending = state.load(Ordering::Acquire);
                state.store(
                    pending & !crate::arena::directory::PENDING,
                    Ordering::Release,
                );
            }
        }
        self.end();
    }

    fn end(&mut self) {
        for &group in &self.touched[..self.touched_len] {
            self.region.bump_version(group);
        }
        self.touched_len = 0;
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.len > 0 {
            // Our own log, written just now: only damage made meanwhile can make it fail, and
            // then the next locker reports it.
            let _ = self.region.roll_back();
        }
        self.end();
    }
}
