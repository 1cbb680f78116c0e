//! Directory slots: the state word, reading a slot whole (checked, or for a lock-free reader
//! that leaves doubt to the lock), and walking a chain with bounded cycle detection.

use super::extent::Head;
use super::names::word_of;
use crate::arena::layout::{self as l, round_up, Geometry, ENTRY_SIZE};
use crate::arena::region::{Mem, Region};
use crate::error::{Error, Result};

/// `state` bit: the entry's insertion is not committed yet; lock-free readers leave it alone.
pub(crate) const PENDING: u64 = 1 << 31;
pub(super) const REFS: u64 = PENDING - 1;

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
    pub(super) fn live(self) -> bool {
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
    pub(super) fn word(&self, field: u64) -> u64 {
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
    /// Offset of the user's data (unchecked: see [`Slot::placed`]).
    #[inline]
    pub(crate) fn data(&self) -> u64 {
        self.word(l::E_DATA)
    }
    /// Bytes asked for.
    #[inline]
    pub(crate) fn size(&self) -> u64 {
        self.word(l::E_SIZE) & ((1 << l::SIZE_BITS) - 1)
    }
    /// The name's length in bytes.
    #[inline]
    pub(crate) fn name_len(&self) -> u64 {
        self.word(l::E_SIZE) >> l::SIZE_BITS
    }
    /// Payload offset of the heap block holding the name and the data.
    #[inline]
    pub(crate) fn block(&self) -> u64 {
        self.word(l::E_BLOCK)
    }
    /// The slot's copy of its name's first bytes ([`name_head`]).
    #[inline]
    pub(crate) fn stored_name_head(&self) -> [u64; 2] {
        [self.word(l::E_NAME_HEAD), self.word(l::E_NAME_HEAD + 8)]
    }

    /// The data offset and size, checked to lie inside the heap and to be aligned to `align`,
    /// so that a block handed to the user is memory this arena owns.
    #[inline]
    pub(crate) fn placed(&self, g: &Geometry, align: u64) -> Result<(u64, u64)> {
        let (data, size) = (self.data(), self.size());
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
#[inline(always)]
pub(crate) fn read_slot<M: Mem + ?Sized>(r: &M, e: u64) -> Result<Slot> {
    let at = check_entry(r, e)?;
    let mut words = [0u64; WORDS];
    r.words(at, &mut words)?;
    Ok(Slot { at, words })
}

/// Slot `e` for a lock-free reader ([`Region::peek`]): `None` where [`read_slot`] would fail.
#[inline]
pub(super) fn peek_slot(r: &Region, e: u64) -> Option<Slot> {
    if !is_slot_offset(r.geometry(), e) {
        return None;
    }
    Some(Slot {
        at: e,
        words: r.peek::<WORDS>(e)?,
    })
}

/// Starts bringing the slots at `firsts` all at once ([`Region::prefetch_write`]): the
/// processor fetches them together, where a walk of the chains one after another would wait
/// for each cache miss in turn (a split or a merge among 100,000 names meets a cold slot per
/// chain, and relinks some of them). Offsets that are not slots are skipped.
#[inline]
pub(super) fn warm(r: &Region, firsts: impl IntoIterator<Item = u64>) {
    for e in firsts {
        if is_slot_offset(r.geometry(), e) {
            r.prefetch_write(e, 1);
        }
    }
}

/// Follows a bucket chain one step at a time, refusing links outside the heap and chains
/// longer than the heap could hold (a cycle in damaged metadata).
/// Cycles are found within about twice the chain's length (Brent's algorithm), so a damaged
/// chain costs no more than the walk of a healthy one.
pub(super) struct Chain<'m, M: Mem + ?Sized> {
    r: &'m M,
    pub(super) next: u64,
    steps: u64,
    /// Brent: a remembered entry, and how far to go before remembering the next one.
    mark: u64,
    power: u64,
}

impl<'m, M: Mem + ?Sized> Chain<'m, M> {
    #[inline]
    pub(super) fn new(r: &'m M, bucket: u64) -> Result<Self> {
        Ok(Chain::starting_at(r, Head(r.load(bucket)?).first()))
    }

    /// The chain whose head (read already) holds `first`.
    #[inline]
    pub(super) fn starting_at(r: &'m M, first: u64) -> Self {
        Chain {
            r,
            next: first,
            steps: 0,
            mark: 0,
            power: 1,
        }
    }

    /// The offset of the next slot, after the checks every step makes (the chain's end, a
    /// cycle, more links than the heap could hold).
    #[inline(always)]
    fn advance(&mut self) -> Result<Option<u64>> {
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
        Ok(Some(self.next))
    }

    #[inline]
    pub(super) fn step(&mut self) -> Result<Option<Slot>> {
        let Some(e) = self.advance()? else {
            return Ok(None);
        };
        let slot = read_slot(self.r, e)?;
        self.next = slot.next();
        Ok(Some(slot))
    }

    /// Like [`Chain::step`], reading only a slot's link and hash: its offset and hash, for
    /// the walks that relink names by their hash (a split, a merge).
    #[inline(always)]
    pub(super) fn step_hash(&mut self) -> Result<Option<(u64, u64)>> {
        let Some(e) = self.advance()? else {
            return Ok(None);
        };
        let at = check_entry(self.r, e)?;
        let mut link_and_hash = [0u64; 2];
        self.r.words(at + l::E_NEXT, &mut link_and_hash)?;
        self.next = link_and_hash[0];
        Ok(Some((at, link_and_hash[1])))
    }
}

// `Chain::step_hash` reads the link and the hash as two consecutive words.
const _: () = assert!(l::E_HASH == l::E_NEXT + 8);

#[inline]
pub(super) fn name_matches<M: Mem + ?Sized>(r: &M, slot: &Slot, name: &[u8]) -> Result<bool> {
    names_equal(|at| r.load(at).ok(), slot, name).ok_or_else(|| outside(slot.block()))
}

/// Whether `slot` holds `name`, the words past its first [`l::NAME_HEAD`] bytes read from the
/// block by `load` (`None`: one could not be read). Word by word, the first two from the slot
/// itself: a name of up to 16 bytes needs no other line. A name starts its 16-aligned block,
/// whose data begins past the name's last word, so whole-word reads stay inside the block; a
/// mismatch usually shows in the first.
#[inline]
pub(crate) fn names_equal(
    mut load: impl FnMut(u64) -> Option<u64>,
    slot: &Slot,
    name: &[u8],
) -> Option<bool> {
    if slot.name_len() != name.len() as u64 {
        return Some(false);
    }
    let block = slot.block();
    for (i, piece) in name.chunks(8).enumerate() {
        let at = i as u64 * 8;
        let word = if at < l::NAME_HEAD {
            slot.word(l::E_NAME_HEAD + at)
        } else {
            load(block.checked_add(at)?)?
        };
        let stored = u64::from_le_bytes(word.to_ne_bytes());
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

/// The slot word that holds a size of `size` bytes and a name of `name_len` bytes (both
/// checked by the caller: a size below `2^SIZE_BITS`, a name of at most `MAX_NAME_LEN`).
#[inline]
pub(super) fn size_word(size: u64, name_len: u64) -> u64 {
    debug_assert!(size >> l::SIZE_BITS == 0 && name_len >> (64 - l::SIZE_BITS) == 0);
    size | name_len << l::SIZE_BITS
}

/// The slot words that hold the first [`l::NAME_HEAD`] bytes of `name`, as the block holds
/// them (memory order), zero after its end.
#[inline]
pub(super) fn name_head(name: &[u8]) -> [u64; 2] {
    let head = &name[..name.len().min(l::NAME_HEAD as usize)];
    let (first, second) = head.split_at(head.len().min(8));
    // `word_of` reads little-endian; a slot word holds the bytes in memory order.
    [word_of(first), word_of(second)].map(|w| u64::from_ne_bytes(w.to_le_bytes()))
}

#[inline]
pub(crate) fn state<M: Mem + ?Sized>(r: &M, e: u64) -> Result<State> {
    Ok(State(r.load(e + l::E_STATE)?))
}

/// The data offset and size of entry `e`, checked as [`Slot::placed`] does.
#[inline]
pub(crate) fn data_of<M: Mem + ?Sized>(r: &M, e: u64, align: u64) -> Result<(u64, u64)> {
    read_slot(r, e)?.placed(r.geometry(), align)
}

/// Heap bytes a block of `bytes` named `name_len` bytes needs, aligned to `align` (`None`: more
/// than a slot can describe, or than a `u64` holds).
pub(crate) fn block_request(name_len: u64, bytes: u64, align: u64) -> Option<u64> {
    if bytes >> l::SIZE_BITS != 0 {
        return None;
    }
    round_up(name_len, l::ALIGN)
        .checked_add(align - l::ALIGN)?
        .checked_add(bytes)
}
