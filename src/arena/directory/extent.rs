//! Where a name lives: the groups in use ([`Extent`], grown by linear hashing), the chain
//! head a hash gives within them, and the head words themselves (first slot and filter,
//! [`Head`]).

use std::sync::atomic::Ordering;

use crate::arena::layout::{self as l, Geometry};
use crate::arena::region::{Mem, Region};
use crate::error::{Error, Result};

/// How many directory groups are in use (the word at [`l::EXTENT`], see [`l::Extent`]), and
/// so which group holds the names of a hash. Read without the lock it is only a hint that
/// the lookup validates (it is read again after the walk); under the lock it is checked
/// ([`Extent::checked`]) before any update relies on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent(pub(crate) u64);

/// Groups in use at creation (fewer if the directory has fewer): one page of cache lines
/// would be more than a few names need, one line would make every update of any name move
/// the version that every lookup reads.
const FIRST_LEVEL: u32 = 3;

/// Chains in use per live name the directory grows to keep. More chains per name mean more
/// splits while names come (4 split a group every 1.75 new names, about 620 of the 3,200
/// instructions a new name cost; 1 every 7); fewer mean longer chains, which a lookup of a
/// missing name would walk, a slot (a cache miss among many names) per name on it, were it not
/// for the heads' filters ([`Head`]): a missing name's bit is clear on most chains, and the
/// miss reads no slot. Measured (same_names, alternated runs): one process making 20,000 new
/// names 440 ns a name with 4 chains per name, 356 with 2, and against 2 (30 runs each) 286
/// -> 220 with 1 and the filters; 2 processes on the same names 421 -> 390, 4 processes 385
/// -> 320. arena_bench at 100,000 live names (reservation 2^18): allocate 271-351 -> 150-181
/// ns, the directory in use being then 0.9 MB, not the whole 2 MiB.
pub(crate) const CHAINS_PER_NAME: u64 = 1;

/// The directory gives its last group back when the chains in use outnumber the live names
/// this many times: 4 times as many as it grows to keep, so that names coming and going
/// around one count do not split and merge a group every time.
pub(super) const SHRINK_AT_CHAINS_PER_NAME: u64 = 4 * CHAINS_PER_NAME;

/// Names one group may hold for a split to move them in one update (7 chains of one name
/// each are expected; a split changes at most one link per name, within the undo log).
pub(super) const SPLIT_LIMIT: u64 = 64;

impl Extent {
    /// The extent of a new directory of `groups` groups.
    pub(crate) fn initial(groups: u64) -> Extent {
        Extent(u64::from(FIRST_LEVEL.min(groups.trailing_zeros())) << 32)
    }
    pub(super) fn level(self) -> u32 {
        // Clamped so that a damaged word cannot make a shift overflow; `checked` refuses it.
        ((self.0 >> 32) as u32).min(40)
    }
    pub(super) fn split(self) -> u64 {
        self.0 & 0xffff_ffff
    }
    /// Groups in use.
    pub(crate) fn groups(self) -> u64 {
        (1u64 << self.level()) + self.split()
    }
    /// The group of the names hashing to `h`, from the hash's low bits; always a group of the
    /// directory `g` (a damaged extent gives a wrong group, never an offset outside).
    #[inline]
    pub(super) fn group_of(self, g: &Geometry, h: u64) -> u64 {
        let low = (1u64 << self.level()) - 1;
        let group = if h & low < self.split() {
            h & (low << 1 | 1)
        } else {
            h & low
        };
        group & (g.groups() - 1)
    }
    /// The group of the names hashing to `h` ([`Extent::group_of`]) and the offset of their
    /// chain's head in it: where every lookup, insert, removal and check finds a name.
    #[inline]
    pub(super) fn chain_of(self, g: &Geometry, h: u64) -> (u64, u64) {
        let group = self.group_of(g, h);
        (group, bucket_in(g, group, h))
    }
    /// The extent the directory `g` can have: below `2^32` groups, the split group inside
    /// the current level, no more groups than the directory holds.
    #[inline]
    pub(crate) fn checked(word: u64, g: &Geometry) -> Result<Extent> {
        let e = Extent(word);
        let level = word >> 32;
        if level >= 32 || e.split() >= 1 << level || e.groups() > g.groups() {
            return Err(e.damaged(g));
        }
        Ok(e)
    }
    #[cold]
    fn damaged(self, g: &Geometry) -> Error {
        let level = self.0 >> 32;
        Error::Corrupted(format!(
            "the directory says {} groups are in use (level {level}, split {}), but it has {}",
            if level >= 32 { u64::MAX } else { self.groups() },
            self.split(),
            g.groups()
        ))
    }
    /// The extent before its last split (the caller checked that there was one).
    pub(super) fn shrunk(self) -> Extent {
        let (level, split) = (u64::from(self.level()), self.split());
        if split == 0 {
            Extent((level - 1) << 32 | ((1 << (level - 1)) - 1))
        } else {
            Extent(level << 32 | (split - 1))
        }
    }
    /// The extent after splitting its next group.
    pub(super) fn grown(self) -> Extent {
        let (level, split) = (u64::from(self.level()), self.split() + 1);
        if split == 1 << level {
            Extent((level + 1) << 32)
        } else {
            Extent(level << 32 | split)
        }
    }
}

/// The extent as stored, unchecked (lock-free lookups validate by reading it again).
#[inline]
pub(super) fn extent_hint(r: &Region) -> u64 {
    r.header_word(l::EXTENT).load(Ordering::Acquire)
}

/// The extent, checked (for verification and inspection, which may read a copy).
pub(crate) fn extent<M: Mem + ?Sized>(r: &M) -> Result<Extent> {
    Extent::checked(r.load(l::EXTENT)?, r.geometry())
}

/// The extent of the mapped arena, checked (under the lock, before an update relies on it).
#[inline]
pub(super) fn current_extent(r: &Region) -> Result<Extent> {
    Extent::checked(extent_hint(r), r.geometry())
}

/// The offset of the chain head of the names hashing to `h` in group `group`: the head chosen
/// by the hash's high 32 bits (a multiply-shift spreads them evenly over the 7 heads).
#[inline]
fn bucket_in(g: &Geometry, group: u64, h: u64) -> u64 {
    let head = ((h >> 32) * l::GROUP_HEADS) >> 32;
    head_offset(g, group, head)
}

/// The offset of head `head` (below [`l::GROUP_HEADS`]) of group `group`.
#[inline]
pub(super) fn head_offset(g: &Geometry, group: u64, head: u64) -> u64 {
    g.buckets_offset + group * l::GROUP_WORDS * 8 + 8 + head * 8
}

/// The bits of a chain head that hold its first slot's offset (arenas are below 2^48 bytes,
/// [`l::MAX_ARENA_SIZE`]); the 16 above them are the chain's filter (see [`Head`]).
pub(super) const OFFSET_MASK: u64 = l::MAX_ARENA_SIZE - 1;

/// The filter bit of the names of hash `h`: one of 16, chosen by hash bits 40-43, which
/// neither the group (the low bits) nor the head within it (the high bits) depends on much.
#[inline]
pub(crate) fn tag(h: u64) -> u64 {
    1u64 << (48 + ((h >> 40) & 15))
}

/// A chain head as stored ([`l::GROUP_WORDS`]): the offset of the chain's first slot, and
/// above it a filter with the [`tag`] of every name linked into the chain since it was last
/// empty or rebuilt by a split or a merge. A superset of the chain's names (a removal leaves
/// its bit), so a lookup whose bit is clear misses without reading a slot. Links inside slots
/// are plain offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head(pub(super) u64);

impl Head {
    #[inline]
    pub(super) fn first(self) -> u64 {
        self.0 & OFFSET_MASK
    }
    #[inline]
    pub(super) fn may_hold(self, h: u64) -> bool {
        self.0 & tag(h) != 0
    }
    #[inline]
    pub(super) fn filter(self) -> u64 {
        self.0 & !OFFSET_MASK
    }
    /// The head of a chain starting at `first` whose names' tags are in `filter` (0 for an
    /// empty chain, whatever the filter).
    #[inline]
    pub(super) fn of(first: u64, filter: u64) -> Head {
        Head(if first == 0 {
            0
        } else {
            first | (filter & !OFFSET_MASK)
        })
    }
}

/// The offset of the chain head of the names hashing to `h`, under the extent in effect.
#[cfg(test)]
pub(crate) fn head_of(r: &Region, h: u64) -> Result<u64> {
    Ok(current_extent(r)?.chain_of(r.geometry(), h).1)
}
