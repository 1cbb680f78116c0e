//! The name directory: a fixed array of chain heads in groups of one cache line, each group
//! with its version (see [`l::GROUP_WORDS`]); a chain links entries. An entry is a 64-byte
//! slot (slots are carved from heap chunks that are never given back); its name and the user's
//! data share one heap block. Lookups are O(1) expected.
//!
//! Only the groups the names need are in use ([`Extent`]): 8 at first, one more split (linear
//! hashing) by each insert that leaves fewer than 1 chain per name, until the whole array
//! is, and one merged back by each removal that leaves more than 4. So a few names live in a
//! few hot cache lines instead of lines scattered over a directory sized for the most names
//! the arena may hold, each cold on a name's first use. Each chain head also carries a filter
//! of its names' hash tags ([`Head`]), so that most lookups of a missing name read no slot.
//!
//! Lookups and reference counting work without the arena lock: a reader walks the chain,
//! validated by its group's version (odd while an update changes a chain of the group, read
//! from the same line as the chain's head), and takes its reference
//! with a compare-and-swap on the slot's state word (generation, pending flag, references),
//! which fails if the slot was removed or reused meanwhile and never revives an entry whose
//! last reference went. Inserting and removing take the lock and the undo log, as before; a
//! process killed at any point leaves either a consistent directory or one that the next
//! locker repairs (the undo log; an entry without references is removed when met).

use std::sync::atomic::Ordering;

use crate::arena::layout::{self as l, round_up, Geometry, ENTRY_SIZE};
use crate::arena::region::{Counter, Mem, Region, Tx};
use crate::arena::{heap, recycle};
use crate::error::{Error, Result};

/// Longest block name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// FNV-1a over 8-byte words with a final avalanche, so that names differing only in a
/// trailing counter spread; also tells whether `name` holds a NUL byte.
fn fnv(name: &[u8]) -> (u64, bool) {
    const LOW: u64 = 0x0101_0101_0101_0101;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ name.len() as u64;
    let mut nul = 0u64;
    // Eight bytes per step (FNV-1a over words): names are hashed on every call. A word has a
    // zero byte exactly when the classic `(w - LOW) & !w & HIGH` test is non-zero; the tail
    // word is padded with 0xff so that its padding never looks like a NUL.
    let mut mix = |w: u64| {
        nul |= w.wrapping_sub(LOW) & !w & (LOW << 7);
        h ^= w;
        h = h.wrapping_mul(0x0100_0000_01b3);
        h ^= h >> 29;
    };
    let mut words = name.chunks_exact(8);
    for w in &mut words {
        mix(word_of(w));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        mix(word_of(tail) | (!0u64 << (8 * tail.len())));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h, nul != 0)
}

/// Up to 8 bytes as a little-endian word, zero-padded: whole-word or two overlapping loads,
/// no byte loop and no library call for the short tail of a name.
#[inline]
fn word_of(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    if let Ok(w) = <[u8; 8]>::try_from(bytes) {
        u64::from_le_bytes(w)
    } else if n >= 4 {
        // Bytes 0..4 and n-4..n, each at its own position; the overlap ORs equal bytes.
        let low = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let high = u32::from_le_bytes([bytes[n - 4], bytes[n - 3], bytes[n - 2], bytes[n - 1]]);
        u64::from(low) | u64::from(high) << (8 * (n - 4))
    } else if n > 0 {
        u64::from(bytes[0])
            | u64::from(bytes[n / 2]) << (8 * (n / 2))
            | u64::from(bytes[n - 1]) << (8 * (n - 1))
    } else {
        0
    }
}

/// The directory hash of a stored name.
pub(crate) fn hash(name: &[u8]) -> u64 {
    fnv(name).0
}

/// The hash of block name `name`, which is checked to be a valid name on the way: 1 to
/// [`MAX_NAME_LEN`] bytes without a NUL, else `InvalidName`.
#[inline]
pub(crate) fn checked_hash(name: &str) -> Result<u64> {
    let (h, nul) = fnv(name.as_bytes());
    if nul || name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid_name(name, nul));
    }
    Ok(h)
}

/// Out of line, so that every lookup's hash stays a few registers.
#[cold]
#[inline(never)]
fn invalid_name(name: &str, nul: bool) -> Error {
    Error::InvalidName {
        name: name.chars().take(64).collect(),
        reason: if nul {
            "block names cannot contain a NUL byte".into()
        } else {
            format!(
                "block names are 1 to {MAX_NAME_LEN} bytes, this one is {} bytes",
                name.len()
            )
        },
    }
}

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
const SHRINK_AT_CHAINS_PER_NAME: u64 = 4 * CHAINS_PER_NAME;

/// Names one group may hold for a split to move them in one update (7 chains of one name
/// each are expected; a split changes at most one link per name, within the undo log).
const SPLIT_LIMIT: u64 = 64;

impl Extent {
    /// The extent of a new directory of `groups` groups.
    pub(crate) fn initial(groups: u64) -> Extent {
        Extent(u64::from(FIRST_LEVEL.min(groups.trailing_zeros())) << 32)
    }
    fn level(self) -> u32 {
        // Clamped so that a damaged word cannot make a shift overflow; `checked` refuses it.
        ((self.0 >> 32) as u32).min(40)
    }
    fn split(self) -> u64 {
        self.0 & 0xffff_ffff
    }
    /// Groups in use.
    pub(crate) fn groups(self) -> u64 {
        (1u64 << self.level()) + self.split()
    }
    /// The group of the names hashing to `h`, from the hash's low bits; always a group of the
    /// directory `g` (a damaged extent gives a wrong group, never an offset outside).
    #[inline]
    fn group_of(self, g: &Geometry, h: u64) -> u64 {
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
    fn chain_of(self, g: &Geometry, h: u64) -> (u64, u64) {
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
    fn shrunk(self) -> Extent {
        let (level, split) = (u64::from(self.level()), self.split());
        if split == 0 {
            Extent((level - 1) << 32 | ((1 << (level - 1)) - 1))
        } else {
            Extent(level << 32 | (split - 1))
        }
    }
    /// The extent after splitting its next group.
    fn grown(self) -> Extent {
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
fn extent_hint(r: &Region) -> u64 {
    r.header_word(l::EXTENT).load(Ordering::Acquire)
}

/// The extent, checked (for verification and inspection, which may read a copy).
pub(crate) fn extent<M: Mem + ?Sized>(r: &M) -> Result<Extent> {
    Extent::checked(r.load(l::EXTENT)?, r.geometry())
}

/// The extent of the mapped arena, checked (under the lock, before an update relies on it).
#[inline]
fn current_extent(r: &Region) -> Result<Extent> {
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
fn head_offset(g: &Geometry, group: u64, head: u64) -> u64 {
    g.buckets_offset + group * l::GROUP_WORDS * 8 + 8 + head * 8
}

/// The bits of a chain head that hold its first slot's offset (arenas are below 2^48 bytes,
/// [`l::MAX_ARENA_SIZE`]); the 16 above them are the chain's filter (see [`Head`]).
const OFFSET_MASK: u64 = l::MAX_ARENA_SIZE - 1;

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
struct Head(u64);

impl Head {
    #[inline]
    fn first(self) -> u64 {
        self.0 & OFFSET_MASK
    }
    #[inline]
    fn may_hold(self, h: u64) -> bool {
        self.0 & tag(h) != 0
    }
    #[inline]
    fn filter(self) -> u64 {
        self.0 & !OFFSET_MASK
    }
    /// The head of a chain starting at `first` whose names' tags are in `filter` (0 for an
    /// empty chain, whatever the filter).
    #[inline]
    fn of(first: u64, filter: u64) -> Head {
        Head(if first == 0 {
            0
        } else {
            first | (filter & !OFFSET_MASK)
        })
    }
}

/// `state` bit: the entry's insertion is not committed yet; lock-free readers leave it alone.
pub(crate) const PENDING: u64 = 1 << 31;
const REFS: u64 = PENDING - 1;

/// A slot's state word, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State(pub(crate) u64);

impl State {
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub(crate) fn refs(self) -> u64 {
        self.0 & REFS
    }
    pub(crate) fn pending(self) -> bool {
        self.0 & PENDING != 0
    }
    /// Holds references and is committed: a reference may be added.
    fn live(self) -> bool {
        self.refs() > 0 && !self.pending()
    }
}

/// Checks that `e` can be a directory slot: an aligned offset inside the heap with room for it.
#[inline]
pub(crate) fn check_entry<M: Mem + ?Sized>(r: &M, e: u64) -> Result<u64> {
    let g = r.geometry();
    if !is_slot_offset(g, e) {
        return Err(bad_link(g, e));
    }
    Ok(e)
}

/// Whether `e` can be a directory slot of `g` ([`check_entry`] without the error).
#[inline]
fn is_slot_offset(g: &Geometry, e: u64) -> bool {
    e >= g.heap_offset + 16 && e % l::ALIGN == 0 && e <= g.sentinel().saturating_sub(ENTRY_SIZE)
}

#[cold]
#[inline(never)]
fn bad_link(g: &Geometry, e: u64) -> Error {
    Error::Corrupted(format!(
        "a directory link points to offset {e}, outside the heap {}..{}",
        g.heap_offset, g.heap_end
    ))
}

/// A directory slot's eight words, read at once with one bounds check ([`read_slot`]). A
/// copy: a lock-free reader validates what it read by the chain group's version and by the
/// state word's compare-and-swap, exactly as it would single loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The slot's offset (checked by [`check_entry`]).
    pub(crate) at: u64,
    words: [u64; WORDS],
}

const WORDS: usize = (ENTRY_SIZE / 8) as usize;

impl Slot {
    #[inline]
    fn word(&self, field: u64) -> u64 {
        self.words[(field / 8) as usize]
    }
    #[inline]
    pub(crate) fn next(&self) -> u64 {
        self.word(l::E_NEXT)
    }
    #[inline]
    pub(crate) fn hash(&self) -> u64 {
        self.word(l::E_HASH)
    }
    #[inline]
    pub(crate) fn state(&self) -> State {
        State(self.word(l::E_STATE))
    }
    #[inline]
    pub(crate) fn size(&self) -> u64 {
        self.word(l::E_SIZE)
    }
    /// Payload offset of the heap block holding the name and the data.
    #[inline]
    pub(crate) fn block(&self) -> u64 {
        self.word(l::E_BLOCK)
    }

    /// The data offset and size, checked to lie inside the heap and to be aligned to `align`,
    /// so that a block handed to the user is memory this arena owns.
    #[inline]
    pub(crate) fn placed(&self, g: &Geometry, align: u64) -> Result<(u64, u64)> {
        let (data, size) = (self.word(l::E_DATA), self.size());
        let block = self.block();
        let end = data.checked_add(size);
        if data < block
            || block < g.heap_offset
            || data % align != 0
            || size == 0
            || end.is_none_or(|end| end > g.sentinel())
        {
            return Err(misplaced(self.at, data, size));
        }
        Ok((data, size))
    }
}

#[cold]
#[inline(never)]
fn misplaced(at: u64, data: u64, size: u64) -> Error {
    Error::Corrupted(format!(
        "entry at {at} describes {size} bytes at offset {data}, not a block of its heap"
    ))
}

/// Slot `e` (checked by [`check_entry`]), all its words.
#[inline]
pub(crate) fn read_slot<M: Mem + ?Sized>(r: &M, e: u64) -> Result<Slot> {
    let at = check_entry(r, e)?;
    let mut words = [0u64; WORDS];
    r.words(at, &mut words)?;
    Ok(Slot { at, words })
}

/// Slot `e` for a lock-free reader ([`Region::peek`]): `None` where [`read_slot`] would fail.
#[inline]
fn peek_slot(r: &Region, e: u64) -> Option<Slot> {
    if !is_slot_offset(r.geometry(), e) {
        return None;
    }
    Some(Slot {
        at: e,
        words: r.peek::<WORDS>(e)?,
    })
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
    #[inline]
    fn new(r: &'m M, bucket: u64) -> Result<Self> {
        Ok(Chain::starting_at(r, Head(r.load(bucket)?).first()))
    }

    /// The chain whose head (read already) holds `first`.
    #[inline]
    fn starting_at(r: &'m M, first: u64) -> Self {
        Chain {
            r,
            next: first,
            steps: 0,
            mark: 0,
            power: 1,
        }
    }

    #[inline]
    fn step(&mut self) -> Result<Option<Slot>> {
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
        let slot = read_slot(self.r, self.next)?;
        self.next = slot.next();
        Ok(Some(slot))
    }
}

#[inline]
fn name_matches<M: Mem + ?Sized>(r: &M, slot: &Slot, name: &[u8]) -> Result<bool> {
    names_equal(|at| r.load(at).ok(), slot, name).ok_or_else(|| outside(slot.block()))
}

/// Whether `slot` holds `name`, its stored words read by `load` (`None`: one could not be
/// read). Word by word: a name starts its 16-aligned block, whose data begins past the name's
/// last word, so whole-word reads stay inside the block; a mismatch usually shows in the first.
#[inline]
fn names_equal(mut load: impl FnMut(u64) -> Option<u64>, slot: &Slot, name: &[u8]) -> Option<bool> {
    if slot.word(l::E_NAME_LEN) != name.len() as u64 {
        return Some(false);
    }
    let block = slot.block();
    for (i, piece) in name.chunks(8).enumerate() {
        let stored = u64::from_le_bytes(load(block.checked_add(i as u64 * 8)?)?.to_ne_bytes());
        let mask = match piece.len() {
            8 => !0,
            n => (1u64 << (8 * n)) - 1,
        };
        if stored & mask != word_of(piece) {
            return Some(false);
        }
    }
    Some(true)
}

#[cold]
#[inline(never)]
fn outside(block: u64) -> Error {
    Error::Corrupted(format!("a name at offset {block} runs past the arena"))
}

#[inline]
pub(crate) fn state<M: Mem + ?Sized>(r: &M, e: u64) -> Result<State> {
    Ok(State(r.load(e + l::E_STATE)?))
}

/// The entry for `name` that holds references, if any (the caller holds the lock). Entries
/// left with no reference by a process that died between dropping the last one and removing
/// the entry are removed on the way ("zombies"), and an entry whose insertion was committed by
/// a process that died before publishing it is published: under the lock, after recovery,
/// every entry in a chain is committed.
pub(crate) fn lookup_locked(tx: &mut Tx, name: &[u8], h: u64) -> Result<Option<u64>> {
    let r = *tx.region();
    // Each round removes one zombie, so the rounds are bounded by the chain's length.
    for _ in 0..=r.geometry().max_blocks() {
        let (_, bucket) = current_extent(&r)?.chain_of(r.geometry(), h);
        let mut chain = Chain::new(&r, bucket)?;
        let mut zombie = None;
        while let Some(slot) = chain.step()? {
            if slot.hash() != h || !name_matches(&r, &slot, name)? {
                continue;
            }
            let e = slot.at;
            let s = state(&r, e)?;
            if s.refs() == 0 {
                zombie = Some((e, s.generation()));
                break;
            }
            if s.pending() {
                r.heap_word(e + l::E_STATE)?
                    .fetch_and(!PENDING, Ordering::AcqRel);
            }
            return Ok(Some(e));
        }
        match zombie {
            Some((e, generation)) => remove_dead(tx, e, generation)?,
            None => return Ok(None),
        }
    }
    Err(Error::Corrupted("a directory chain keeps changing".into()))
}

/// What a lock-free lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fast {
    /// A live entry named so (checked again by the reference's compare-and-swap), as read.
    Hit(Slot),
    /// No such name, and no update of its chain ran meanwhile: `version` is what the chain's
    /// group version read and `extent` the directory's extent (see [`still_missing`]).
    Miss { version: u64, extent: u64 },
    /// An update ran meanwhile, or something looked wrong: ask again under the lock (which
    /// also reports real damage).
    Busy,
}

/// Looks `name` up without the lock. A hit is a slot that was live, named so, in a directory
/// no update touched during the walk (so the slot belongs to a committed chunk: memory that
/// stays a slot); the caller then takes its reference with [`take_reference`], whose
/// compare-and-swap fails if the slot changed generation or lost its last reference since.
pub(crate) fn lookup_fast(r: &Region, name: &[u8], h: u64) -> Fast {
    let g = r.geometry();
    // The extent first: a split that ends before the version is read is then seen by the
    // second read of the extent (the split writes it before making its versions even).
    let extent = extent_hint(r);
    let (group, bucket) = Extent(extent).chain_of(g, h);
    let version = r.version(group);
    let before = version.load(Ordering::Acquire);
    if before & 1 == 1 {
        return Fast::Busy;
    }
    // Ok(None) with `dead`: an entry of this name without references, or one whose update a
    // dead process committed but did not publish: only the lock can tell what to do with it.
    let mut dead = false;
    // A plain bounded walk, no cycle detection: a chain longer than FAST_STEPS (a cycle,
    // or names far beyond the directory's size) is left to the lock, whose walk reports it.
    // `None`: something could not be read; the lock's walk tells what.
    let mut walk = || -> Option<Option<Slot>> {
        let [head] = r.peek::<1>(bucket)?;
        let head = Head(head);
        if !head.may_hold(h) {
            return Some(None);
        }
        let mut next = head.first();
        for _ in 0..FAST_STEPS {
            if next == 0 {
                return Some(None);
            }
            let slot = peek_slot(r, next)?;
            if slot.hash() == h && names_equal(|at| r.peek::<1>(at).map(|[w]| w), &slot, name)? {
                if slot.state().live() {
                    return Some(Some(slot));
                }
                dead = true;
            }
            next = slot.next();
        }
        None
    };
    let found = walk();
    // The walk's loads may not move past the second read of the version (a seqlock reader).
    std::sync::atomic::fence(Ordering::Acquire);
    if version.load(Ordering::Acquire) != before || extent_hint(r) != extent {
        return Fast::Busy;
    }
    match found {
        Some(Some(slot)) => Fast::Hit(slot),
        Some(None) if !dead => Fast::Miss {
            version: before,
            extent,
        },
        _ => Fast::Busy,
    }
}

/// Links a lock-free lookup follows before it leaves the chain to the lock: far more than a
/// chain holds with a chain per name.
const FAST_STEPS: u32 = 64;

/// After a [`Fast::Busy`]: waits a little (a bounded spin, no clock) for the update of the
/// chain of `h` to end, so that the lookup can be tried again without the lock. False when it
/// did not end in time (the caller then takes the lock, which waits properly).
pub(crate) fn wait_for_chain(r: &Region, h: u64) -> bool {
    let version = r.version(Extent(extent_hint(r)).group_of(r.geometry(), h));
    for _ in 0..512 {
        if version.load(Ordering::Acquire) & 1 == 0 {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

/// The offset of the chain head of the names hashing to `h`, under the extent in effect.
#[cfg(test)]
pub(crate) fn head_of(r: &Region, h: u64) -> Result<u64> {
    Ok(current_extent(r)?.chain_of(r.geometry(), h).1)
}

/// Whether the miss that [`lookup_fast`] reported with `version` and `extent` still holds (no
/// split since, and no update changed a chain of that group; a recovery moves every odd
/// version). Under the lock, true means the name can be inserted without walking its chain
/// again; without it (a waiter for the lock), false means the name may have appeared.
pub(crate) fn still_missing(r: &Region, h: u64, version: u64, extent: u64) -> bool {
    extent_hint(r) == extent
        && r.version(Extent(extent).group_of(r.geometry(), h))
            .load(Ordering::Acquire)
            == version
}

/// Adds one reference to entry `e` if its state is still `seen` (same generation, live):
/// `Ok(false)` when it changed (the caller looks again). Lock-free: a compare-and-swap that
/// never revives an entry without references.
#[inline]
pub(crate) fn take_reference(r: &Region, e: u64, seen: State) -> Result<bool> {
    if !seen.live() {
        return Ok(false);
    }
    if seen.refs() == REFS {
        return Err(too_many_references(e));
    }
    let word = r.heap_word(e + l::E_STATE)?;
    Ok(word
        .compare_exchange(seen.0, seen.0 + 1, Ordering::AcqRel, Ordering::Acquire)
        .is_ok())
}

#[cold]
#[inline(never)]
fn too_many_references(e: u64) -> Error {
    Error::InvalidArgument(format!(
        "the block at entry {e} has {REFS} references already; release some first"
    ))
}

/// Takes a reference to `e` whatever its reference count is now (under the lock, after
/// [`lookup_locked`] found it live): `Ok(None)` if its last reference went meanwhile.
pub(crate) fn take_reference_now(r: &Region, e: u64) -> Result<Option<u32>> {
    // Each failed swap means another process changed the count: bounded by a large number of
    // such races, so that damage that flips the word forever ends in an error.
    for _ in 0..1_000_000 {
        let s = state(r, e)?;
        if s.refs() == 0 {
            return Ok(None);
        }
        // Under the lock every entry in a chain is committed and `lookup_locked` published it,
        // so the state is live here unless its count just reached zero.
        if take_reference(r, e, s)? {
            return Ok(Some(s.generation()));
        }
    }
    Err(Error::Corrupted(format!(
        "the reference count of entry {e} keeps changing"
    )))
}

/// Drops one reference of generation `generation` from `e`, lock-free. Returns true when it
/// was the last one: the caller then removes the entry under the lock ([`remove_dead`]).
/// `NotHeld`-like damage (another generation, no reference) is `Corrupted`.
pub(crate) fn drop_reference(r: &Region, e: u64, generation: u32) -> Result<bool> {
    let word = r.heap_word(e + l::E_STATE)?;
    for _ in 0..1_000_000 {
        let s = State(word.load(Ordering::Acquire));
        if s.generation() != generation || s.refs() == 0 {
            return Err(Error::Corrupted(format!(
                "the entry at {e} changed while this process held a reference to it \
                 (generation {} with {} references, expected generation {generation})",
                s.generation(),
                s.refs()
            )));
        }
        if word
            .compare_exchange(s.0, s.0 - 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Ok(s.refs() == 1);
        }
    }
    Err(Error::Corrupted(format!(
        "the reference count of entry {e} keeps changing"
    )))
}

/// The data offset and size of entry `e`, checked as [`Slot::placed`] does.
#[inline]
pub(crate) fn data_of<M: Mem + ?Sized>(r: &M, e: u64, align: u64) -> Result<(u64, u64)> {
    read_slot(r, e)?.placed(r.geometry(), align)
}

/// Heap bytes a block of `bytes` named `name_len` bytes needs, aligned to `align`.
pub(crate) fn block_request(name_len: u64, bytes: u64, align: u64) -> Option<u64> {
    round_up(name_len, l::ALIGN)
        .checked_add(align - l::ALIGN)?
        .checked_add(bytes)
}

/// A free slot, carving a new chunk of them from the heap when none is left.
fn take_slot(tx: &mut Tx) -> Result<u64> {
    let r = *tx.region();
    let head = tx.get(l::SLOT_FREE)?;
    if head != 0 {
        let slot = check_entry(&r, head)?;
        tx.set(l::SLOT_FREE, r.load(slot + l::E_NEXT)?)?;
        return Ok(slot);
    }
    let chunk = heap::alloc(tx, l::SLOTS_PER_CHUNK * ENTRY_SIZE)?;
    // The chunk is fresh (zeroed: generation 0, no references) and unreachable until the
    // list head below, so plain stores suffice for its links.
    for i in 1..l::SLOTS_PER_CHUNK {
        let next = if i + 1 < l::SLOTS_PER_CHUNK {
            chunk + (i + 1) * ENTRY_SIZE
        } else {
            0
        };
        r.store(chunk + i * ENTRY_SIZE + l::E_NEXT, next)?;
    }
    tx.set(l::SLOT_FREE, chunk + ENTRY_SIZE)?;
    tx.set(l::SLOTS, tx.get(l::SLOTS)?.wrapping_add(l::SLOTS_PER_CHUNK))?;
    Ok(chunk)
}

/// Creates the entry `name` holding one reference, with zeroed data of `bytes` bytes aligned
/// to `align`; returns the slot, its generation and the data offset. Lock-free readers see it
/// once the update commits.
pub(crate) fn insert(
    tx: &mut Tx,
    name: &[u8],
    h: u64,
    bytes: u64,
    align: u64,
) -> Result<(u64, u32, u64)> {
    let r = *tx.region();
    let request = block_request(name.len() as u64, bytes, align)
        .ok_or_else(|| Error::InvalidArgument(format!("a block of {bytes} bytes cannot exist")))?;
    let payload = heap::payload_for(request)?;
    let (slot, block) = match recycle::take(tx, payload)? {
        Some((slot, block)) => {
            // Parked: whatever its last name left in it goes (fresh heap blocks come zeroed).
            r.zero(block, payload)?;
            (slot, block)
        }
        None => {
            // The slot first: a new chunk of slots then lies below the block, so that freeing
            // the block later merges it with the free space after it. A block that cannot fit
            // fails before a chunk is carved, so the error's figures are the arena's as it
            // stands.
            if tx.get(l::SLOT_FREE)? == 0 {
                heap::check_fits(&r, request)?;
            }
            let slot = take_slot(tx)?;
            (slot, heap::alloc(tx, request)?)
        }
    };
    let (group, bucket) = grow(tx)?.chain_of(r.geometry(), h);
    // Before the new slot is linked: readers of this chain see the version move.
    tx.touch(group)?;
    let data = round_up(block + name.len() as u64, align);
    let generation = state(&r, slot)?.generation().wrapping_add(1);
    // The new generation first, pending: a reader holding this slot's offset from before now
    // leaves it alone. Logged, so that a rollback gives the slot back as it was.
    tx.set(
        slot + l::E_STATE,
        (u64::from(generation) << 32) | PENDING | 1,
    )?;
    r.write_bytes(block, name)?;
    r.store(slot + l::E_HASH, h)?;
    r.store_words(slot + l::E_DATA, &[data, bytes, block, name.len() as u64])?;
    // Logged: on a rollback this word is the free list's link again.
    let head = Head(tx.get(bucket)?);
    tx.set(slot + l::E_NEXT, head.first())?;
    tx.set(bucket, Head::of(slot, head.filter() | tag(h)).0)?;
    tx.count(Counter::LiveBlocks, 1);
    tx.count(Counter::Requested, bytes);
    tx.publish_at_commit(slot + l::E_STATE);
    Ok((slot, generation, data))
}

/// Splits the next group of the directory (linear hashing) when the names, counting the one
/// being inserted, have fewer than [`CHAINS_PER_NAME`] chains each and the directory has
/// groups left: the names
/// of that group whose hash has the level's bit set move, chain by chain and keeping their
/// order, to the same heads of the group `2^level` further, which was unused and empty.
/// Both groups' versions move first, and the extent is written before they move again, so a
/// lock-free lookup that read the old extent fails its validation. Every changed word is
/// logged: a process killed halfway leaves the old directory to the rollback. A group
/// holding more names than one update may relink ([`SPLIT_LIMIT`], far beyond what the hash
/// gives) is left unsplit, and the directory stops growing while it is so: lookups get
/// slower, never wrong.
/// Returns the extent in effect after it (checked), which the insert then files its name by.
#[inline]
fn grow(tx: &mut Tx) -> Result<Extent> {
    let r = *tx.region();
    let now = current_extent(&r)?;
    let names = live_names(&r).saturating_add(1);
    if now.groups() >= r.geometry().groups()
        || names.saturating_mul(CHAINS_PER_NAME) <= now.groups() * l::GROUP_HEADS
    {
        return Ok(now);
    }
    split_next(tx, now)
}

/// The live names as last committed (the count of the update running is not in it yet).
#[inline]
fn live_names(r: &Region) -> u64 {
    r.header_word(l::LIVE_BLOCKS).load(Ordering::Relaxed)
}

/// The split of [`grow`], out of line: its lists take a few KiB of stack, which every insert
/// would otherwise reserve (and probe) whether it splits or not.
#[inline(never)]
fn split_next(tx: &mut Tx, now: Extent) -> Result<Extent> {
    let r = *tx.region();
    let g = *r.geometry();
    let (from, bit) = (now.split(), 1u64 << now.level());
    let to = from + bit;
    let (mut firsts, mut unused) = (
        [0u64; l::GROUP_HEADS as usize],
        [0u64; l::GROUP_HEADS as usize],
    );
    r.words(head_offset(&g, from, 0), &mut firsts)?;
    r.words(head_offset(&g, to, 0), &mut unused)?;
    if unused.iter().any(|&w| w != 0) {
        return Err(Error::Corrupted(format!(
            "directory group {to} is not in use yet but holds names"
        )));
    }
    // The group's names, head by head and in chain order, each with whether it moves (bit 0:
    // slots are word-aligned) and its tag (the filter bits above the offset), and where each
    // head's run ends.
    // One flat list of words: a typical group holds a few names, and what the split zeroes
    // and copies should not be a list per head of the most any head may hold.
    let mut names = [0u64; SPLIT_LIMIT as usize];
    let mut ends = [0usize; l::GROUP_HEADS as usize];
    let mut total = 0;
    for (head, &first) in firsts.iter().enumerate() {
        let mut chain = Chain::starting_at(&r, Head(first).first());
        while let Some(slot) = chain.step()? {
            if total == SPLIT_LIMIT as usize {
                return Ok(now);
            }
            let h = slot.hash();
            names[total] = slot.at | tag(h) | u64::from(h & bit != 0);
            total += 1;
        }
        ends[head] = total;
    }
    tx.touch(from)?;
    tx.touch(to)?;
    // Each head's two lists are rebuilt from their ends, and a link is written only where it
    // changes. What each link holds now is known from the walk: a head of `from` its word as
    // read, a head of `to` nothing, a name the name after it in the run. A rebuilt head's
    // filter holds exactly its run's tags.
    let slot_of = |n: u64| n & OFFSET_MASK & !1;
    let tag_of = |n: u64| n & !OFFSET_MASK;
    let mut start = 0;
    for (head, (&end, &first)) in ends.iter().zip(&firsts).enumerate() {
        for (moves, group, held) in [(0, from, first), (1, to, 0)] {
            let run = || (start..end).filter(|&i| names[i] & 1 == moves);
            let filter = run().fold(0, |f, i| f | tag_of(names[i]));
            let (mut link, mut holds) = (head_offset(&g, group, head as u64), held);
            let mut at_head = true;
            for i in run() {
                let slot = slot_of(names[i]);
                let value = if at_head {
                    Head::of(slot, filter).0
                } else {
                    slot
                };
                if holds != value {
                    tx.set(link, value)?;
                }
                at_head = false;
                link = slot + l::E_NEXT;
                holds = if i + 1 < end {
                    slot_of(names[i + 1])
                } else {
                    0
                };
            }
            if holds != 0 {
                tx.set(link, 0)?;
            }
        }
        start = end;
    }
    tx.set(l::EXTENT, now.grown().0)?;
    Ok(now.grown())
}

/// Undoes the last splits (merges the last group in use back into the group it was split
/// from), up to [`MERGES_PER_REMOVAL`] of them, while the live names have more than
/// [`SHRINK_AT_CHAINS_PER_NAME`] chains each, down to the directory's first size: the names
/// of each chain of the last group go, in their order, in front of the same chain of the
/// other group, so that a directory that once held many names gets small and hot again.
/// Called after a removal, under the lock, logged and validated like [`grow`].
#[inline]
pub(crate) fn shrink(tx: &mut Tx) -> Result<()> {
    let r = *tx.region();
    if !merge_due(&r, current_extent(&r)?) {
        return Ok(());
    }
    for _ in 0..MERGES_PER_REMOVAL {
        if !merge_last(tx)? {
            break;
        }
    }
    Ok(())
}

/// Whether the directory `now` is larger than its first size and has more than
/// [`SHRINK_AT_CHAINS_PER_NAME`] chains per live name (the removal running has not committed
/// its count yet: one fewer).
#[inline]
fn merge_due(r: &Region, now: Extent) -> bool {
    let names = live_names(r).saturating_sub(1);
    now.groups() > Extent::initial(r.geometry().groups()).groups()
        && names.saturating_mul(SHRINK_AT_CHAINS_PER_NAME) < now.groups() * l::GROUP_HEADS
}

/// Merges per removal: enough that the chains in use follow the names down (3 groups are 21
/// chains, more than the 4 a name stands for), few enough for one update (each merge
/// moves two group versions and logs at most 22 words).
const MERGES_PER_REMOVAL: usize = 3;

/// One merge of [`shrink`]; false when none was due (or the last group holds too many names
/// to move in one update).
#[inline(never)]
fn merge_last(tx: &mut Tx) -> Result<bool> {
    let r = *tx.region();
    let g = *r.geometry();
    let now = current_extent(&r)?;
    if !merge_due(&r, now) {
        return Ok(false);
    }
    let before = now.shrunk();
    let (last, into) = (before.groups(), before.split());
    // Each head's first and last name in the group given back, and its filter.
    let mut ends = [(0u64, 0u64); l::GROUP_HEADS as usize];
    let mut filters = [0u64; l::GROUP_HEADS as usize];
    let mut total = 0;
    for head in 0..l::GROUP_HEADS {
        let word = Head(r.load(head_offset(&g, last, head))?);
        filters[head as usize] = word.filter();
        let mut chain = Chain::starting_at(&r, word.first());
        while let Some(slot) = chain.step()? {
            total += 1;
            if total > SPLIT_LIMIT {
                return Ok(false);
            }
            let end = &mut ends[head as usize];
            if end.0 == 0 {
                end.0 = slot.at;
            }
            end.1 = slot.at;
        }
    }
    tx.touch(into)?;
    tx.touch(last)?;
    for ((head, &(first, tail)), &filter) in (0..l::GROUP_HEADS).zip(&ends).zip(&filters) {
        if first == 0 {
            continue;
        }
        let to = head_offset(&g, into, head);
        let kept = Head(tx.get(to)?);
        tx.set(tail + l::E_NEXT, kept.first())?;
        tx.set(to, Head::of(first, kept.filter() | filter).0)?;
        tx.set(head_offset(&g, last, head), 0)?;
    }
    tx.set(l::EXTENT, before.0)?;
    Ok(true)
}

// `insert` writes these four fields with one store of consecutive words.
const _: () = assert!(
    l::E_SIZE == l::E_DATA + 8 && l::E_BLOCK == l::E_DATA + 16 && l::E_NAME_LEN == l::E_DATA + 24
);

/// Removes entry `e` of generation `generation`, whose last reference was dropped: unlinks
/// it and parks its slot with its block (see `recycle.rs`), or frees both when the block is
/// too large to park. Nothing happens if another process removed it
/// already (it is no longer in its chain, or the slot moved on to another generation).
pub(crate) fn remove_dead(tx: &mut Tx, e: u64, generation: u32) -> Result<()> {
    let r = *tx.region();
    let dead = read_slot(&r, e)?;
    let s = dead.state();
    if s.generation() != generation || s.refs() != 0 {
        return Ok(());
    }
    let h = dead.hash();
    let (group, bucket) = current_extent(&r)?.chain_of(r.geometry(), h);
    let mut link = bucket;
    let mut chain = Chain::new(&r, bucket)?;
    // Stops at the link that holds `e`, without reading `e`'s slot a second time.
    while chain.next != e {
        let Some(x) = chain.step()? else {
            return Ok(());
        };
        link = x.at + l::E_NEXT;
    }
    tx.touch(group)?;
    // A head keeps its filter (the dead name's bit stays until the chain empties or is
    // rebuilt); a slot's link is a plain offset.
    let unlinked = if link == bucket {
        Head::of(dead.next(), Head(tx.get(bucket)?).filter()).0
    } else {
        dead.next()
    };
    tx.set(link, unlinked)?;
    tx.count(Counter::LiveBlocks, 1u64.wrapping_neg());
    tx.count(Counter::Requested, dead.size().wrapping_neg());
    if recycle::park(tx, &dead)? {
        return Ok(());
    }
    give_back(tx, e)
}

/// Frees the block of slot `e` (on no chain, without references) and puts the slot on the
/// free slots.
pub(crate) fn give_back(tx: &mut Tx, e: u64) -> Result<()> {
    heap::free(tx, tx.get(e + l::E_BLOCK)?)?;
    tx.set(e + l::E_NEXT, tx.get(l::SLOT_FREE)?)?;
    tx.set(l::SLOT_FREE, e)
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
    r.read_bytes(r.load(e + l::E_BLOCK)?, &mut name)?;
    Ok(EntryInfo {
        name: String::from_utf8_lossy(&name).into_owned(),
        offset: r.load(e + l::E_DATA)?,
        size: r.load(e + l::E_SIZE)?,
        refcount: state(r, e)?.refs(),
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
    let live = r.load(l::LIVE_BLOCKS).unwrap_or(0);
    let cap = live.min(limit).min(r.geometry().max_blocks()).min(1 << 20);
    let mut out = Vec::with_capacity(cap as usize);
    let walked = each_entry(r, |_, slot| {
        if out.len() as u64 >= limit {
            return Ok(false);
        }
        out.push(read_entry(r, slot.at)?);
        Ok(true)
    });
    match walked {
        Ok(more) => (out, more, None),
        Err(e) => (out, false, Some(e)),
    }
}

/// The one walk of the whole directory: calls `visit(chain head offset, slot)` for every entry
/// on the chains, in directory order, until it returns false. Bounded: `Corrupted` on a bad link, a
/// cycle, or more entries than the heap could hold. True when `visit` stopped the walk.
pub(super) fn each_entry<M: Mem + ?Sized>(
    r: &M,
    mut visit: impl FnMut(u64, &Slot) -> Result<bool>,
) -> Result<bool> {
    let g = *r.geometry();
    let mut total = 0u64;
    let heads = (0..g.groups())
        .flat_map(|group| (0..l::GROUP_HEADS).map(move |head| head_offset(&g, group, head)));
    for i in heads {
        let mut chain = Chain::new(r, i)?;
        while let Some(slot) = chain.step()? {
            total += 1;
            if total > g.max_blocks() {
                return Err(Error::Corrupted(
                    "the directory holds more entries than the heap could".into(),
                ));
            }
            if !visit(i, &slot)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The entries on the chains and the sum of their sizes: what `LIVE_BLOCKS` and `REQUESTED`
/// must say.
fn count_entries<M: Mem + ?Sized>(r: &M) -> Result<(u64, u64)> {
    let (mut seen, mut requested) = (0u64, 0u64);
    each_entry(r, |_, slot| {
        seen += 1;
        requested = requested.wrapping_add(slot.size());
        Ok(true)
    })?;
    Ok((seen, requested))
}

/// After a recovery (under the lock): sets `LIVE_BLOCKS` and `REQUESTED`, which updates change
/// outside the undo log, to what the directory holds. O(buckets + entries).
pub(crate) fn recount(r: &Region) -> Result<()> {
    let (live, requested) = count_entries(r)?;
    r.store(l::LIVE_BLOCKS, live)?;
    r.store(l::REQUESTED, requested)
}

/// Checks that every entry is inside the heap, in the right bucket, and counted.
pub(crate) fn verify<M: Mem + ?Sized>(r: &M) -> Result<u64> {
    let live = r.load(l::LIVE_BLOCKS)?;
    let g = r.geometry();
    // Every entry must be in the group its hash gives under this extent, so none is in an
    // unused group.
    let extent = extent(r)?;
    let mut seen = 0u64;
    let mut requested = 0u64;
    each_entry(r, |i, slot| {
        let info = read_entry(r, slot.at)?;
        // An entry without references is allowed: its last holder died before removing it,
        // and the next update that meets it removes it.
        let h = hash(info.name.as_bytes());
        if extent.chain_of(g, h).1 != i {
            return Err(Error::Corrupted(format!(
                "entry {:?} is misfiled",
                info.name
            )));
        }
        // A head whose filter lacks a name of its chain would make lock-free lookups miss it.
        if !Head(r.load(i)?).may_hold(h) {
            return Err(Error::Corrupted(format!(
                "the chain head at offset {i} does not announce entry {:?} in its filter",
                info.name
            )));
        }
        slot.placed(r.geometry(), l::ALIGN)?;
        seen += 1;
        requested = requested.wrapping_add(info.size);
        if seen > live {
            return Err(Error::Corrupted(format!(
                "more entries than the {live} counted"
            )));
        }
        Ok(true)
    })?;
    if seen != live || requested != r.load(l::REQUESTED)? {
        return Err(Error::Corrupted(format!(
            "{seen} entries of {requested} bytes, counters say {live} and {}",
            r.load(l::REQUESTED)?
        )));
    }
    Ok(seen)
}
