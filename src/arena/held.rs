//! The references this process holds, by data offset: what `deallocate` checks a release
//! against (a block released more often than taken is refused) and what dropping the handle
//! gives back. Process-local memory, shared by the handle's threads.
//!
//! Its lock is a small spin lock rather than parking_lot's mutex: every allocate, find and
//! deallocate takes it once, for one map operation and never while waiting for anything else,
//! and a spin lock's release is a plain store where a parking mutex's is a second atomic
//! read-modify-write (about 9 ns of the 18 ns of a lock and unlock pair, measured here). A
//! waiter spins briefly, then yields its core, so that an oversubscribed node still
//! makes progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// One block this process holds references to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub(super) entry: u64,
    /// The entry's generation when the references were taken.
    pub(super) generation: u32,
    pub(super) count: u64,
}

/// The held references by data offset, behind [`RawSpin`].
pub(super) type HeldRefs = lock_api::Mutex<RawSpin, HeldMap>;

pub(super) type HeldMap = HashMap<u64, Held, std::hash::BuildHasherDefault<OffsetHasher>>;

/// Hashes the arena offsets used as keys of the map (distinct multiples of 16), keeping their
/// order: the low 57 bits are the offset in 16-byte granules, the top 7 a multiply of it.
/// std's map (hashbrown) places an entry by the low bits and tells entries of one probe group
/// apart by the top 7, so blocks made one after another (at rising offsets) land in
/// neighbouring buckets, and a process holding 100,000 names inserts and removes entries in
/// lines the prefetcher brings instead of one cache miss each (a random hash cost that; with
/// 100,000 live names, 20,000 new ones took 380-460 ns each, 320-350 with this hash, and their
/// release 230-280 ns, 110-220). Distinct offsets never share a whole hash, and it is cheaper
/// than SipHash.
#[derive(Default, Clone, Copy)]
pub(super) struct OffsetHasher(u64);

impl std::hash::Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        let granule = v >> 4;
        let mixed = granule.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = (granule & LOW_57) | (mixed & !LOW_57);
    }
}

/// The hash bits that hold the offset (std's map takes the top 7 as tags).
const LOW_57: u64 = (1 << 57) - 1;

/// A test-and-test-and-set spin lock for critical sections of a few hundred instructions.
pub(super) struct RawSpin(AtomicBool);

// SAFETY: `lock` returns only after this thread's compare-and-swap changed the flag from false
// to true (Acquire), and `unlock` stores false (Release): exactly one holder at a time, and
// each holder sees the writes of the previous one.
unsafe impl lock_api::RawMutex for RawSpin {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: RawSpin = RawSpin(AtomicBool::new(false));
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        if self.try_lock() {
            return;
        }
        self.lock_contended();
    }

    #[inline]
    fn try_lock(&self) -> bool {
        self.0
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

impl RawSpin {
    #[cold]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        loop {
            // Read-only while it is taken, so that waiters do not pull the line from the holder.
            while self.0.load(Ordering::Relaxed) {
                if spins < 64 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    // The holder may be descheduled (more threads than cores): give it the core.
                    std::thread::yield_now();
                }
            }
            if lock_api::RawMutex::try_lock(self) {
                return;
            }
        }
    }
}
