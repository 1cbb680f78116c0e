//! The undo log: every metadata update under the arena lock is a [`Tx`], which records the
//! old value of each word in the in-arena log before changing it, so that an update is either
//! complete or undone, even when the process making it is killed halfway; the next process to
//! take the lock after such a death calls [`Region::roll_back`]. The log lies in the header
//! (`layout::Log`); the words an update may change are checked by [`Region::writable`].

use std::sync::atomic::Ordering;

use crate::arena::layout::{self as l, UNDO_CAPACITY};
use crate::arena::region::{Mem, Region};
use crate::error::{Error, Result};

impl Region {
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
            let [off, old] = self.undo_entry(i).map(|w| w.load(Ordering::Acquire));
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
    /// Which of a size class's parked lists this process's removals extend first
    /// (`recycle.rs`), by its attacher record (creator 0, attachers 1, 2, ...): the released
    /// names of up to `PARK_LISTS` ranks then stay on a list each, whose tail slot the rank
    /// wrote last, instead of linking after a slot another core just wrote.
    home: usize,
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
            home: 0,
            #[cfg(test)]
            limit: None,
        }
    }

    /// The update of the process whose attacher record is `attacher` (see `home`).
    pub(crate) fn by(mut self, attacher: u64) -> Self {
        self.home = (attacher % l::PARK_LISTS as u64) as usize;
        self
    }

    /// The parked list this process's removals extend first.
    #[inline(always)]
    pub(crate) fn home(&self) -> usize {
        self.home
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

    /// Tests: the words logged so far.
    #[cfg(test)]
    pub(crate) fn logged(&self) -> u64 {
        self.len
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
