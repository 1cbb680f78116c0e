//! Growing and shrinking the groups in use (linear hashing): a split by each insert that
//! leaves fewer than [`CHAINS_PER_NAME`] chains per name, merges by removals that leave many
//! more. Each is one logged update that moves the versions of the groups it changes.

use std::sync::atomic::Ordering;

use super::extent::{current_extent, head_offset, tag, Extent, Head, OFFSET_MASK};
use super::extent::{CHAINS_PER_NAME, SHRINK_AT_CHAINS_PER_NAME, SPLIT_LIMIT};
use super::slot::{warm, Chain};
use crate::arena::layout as l;
use crate::arena::region::{Mem, Region};
use crate::arena::undo::Tx;
use crate::error::{Error, Result};

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
pub(super) fn grow(tx: &mut Tx) -> Result<Extent> {
    let r = tx.region();
    let now = current_extent(r)?;
    let names = live_names(r).saturating_add(1);
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

/// The split of [`grow`], out of line: its lists take over half a KiB of stack, which every
/// insert would otherwise reserve whether it splits or not (one in seven does).
#[inline(never)]
fn split_next(tx: &mut Tx, now: Extent) -> Result<Extent> {
    let r = tx.region();
    let g = *r.geometry();
    let (from, bit) = (now.split(), 1u64 << now.level());
    let to = from + bit;
    let (mut firsts, mut unused) = (
        [0u64; l::GROUP_HEADS as usize],
        [0u64; l::GROUP_HEADS as usize],
    );
    r.words(head_offset(&g, from, 0), &mut firsts)?;
    warm(r, firsts.map(|w| Head(w).first()));
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
        let mut chain = Chain::starting_at(r, Head(first).first());
        while let Some((at, h)) = chain.step_hash()? {
            if total == SPLIT_LIMIT as usize {
                return Ok(now);
            }
            names[total] = at | tag(h) | u64::from(h & bit != 0);
            total += 1;
        }
        ends[head] = total;
    }
    tx.touch(from)?;
    tx.touch(to)?;
    // Each head's two lists are rebuilt in one pass over its run, and a link is written only
    // where it changes. What each link holds now is known from the walk: a name's link the
    // name after it in the run, a head of `from` its word as read, a head of `to` nothing. A
    // rebuilt head's filter holds exactly its list's tags; heads are written last.
    let slot_of = |n: u64| n & OFFSET_MASK & !1;
    let tag_of = |n: u64| n & !OFFSET_MASK;
    let mut start = 0;
    for (head, (&end, &first)) in ends.iter().zip(&firsts).enumerate() {
        let mut lists = [
            Rebuilt::new(head_offset(&g, from, head as u64), first),
            Rebuilt::new(head_offset(&g, to, head as u64), 0),
        ];
        for i in start..end {
            let list = &mut lists[(names[i] & 1) as usize];
            let slot = slot_of(names[i]);
            match list.last {
                None => list.first = slot,
                Some((link, holds)) if holds != slot => tx.set(link, slot)?,
                Some(_) => {}
            }
            list.filter |= tag_of(names[i]);
            let after = if i + 1 < end {
                slot_of(names[i + 1])
            } else {
                0
            };
            list.last = Some((slot + l::E_NEXT, after));
        }
        for list in &lists {
            if let Some((link, holds)) = list.last {
                if holds != 0 {
                    tx.set(link, 0)?;
                }
            }
            let word = Head::of(list.first, list.filter).0;
            if word != list.held {
                tx.set(list.head, word)?;
            }
        }
        start = end;
    }
    tx.set(l::EXTENT, now.grown().0)?;
    Ok(now.grown())
}

/// One of the two lists a split makes of a chain: its head, what the head holds now, and the
/// list's first name, filter and last link (with what that link holds now) so far.
struct Rebuilt {
    head: u64,
    held: u64,
    first: u64,
    filter: u64,
    last: Option<(u64, u64)>,
}

impl Rebuilt {
    fn new(head: u64, held: u64) -> Self {
        Rebuilt {
            head,
            held,
            first: 0,
            filter: 0,
            last: None,
        }
    }
}

/// Undoes the last splits (merges the last group in use back into the group it was split
/// from), up to [`MERGES_PER_REMOVAL`] of them, while the live names have more than
/// [`SHRINK_AT_CHAINS_PER_NAME`] chains each, down to the directory's first size: the names
/// of each chain of the last group go, in their order, in front of the same chain of the
/// other group, so that a directory that once held many names gets small and hot again.
/// Called after a removal, under the lock, logged and validated like [`grow`].
#[inline]
pub(crate) fn shrink(tx: &mut Tx) -> Result<()> {
    let r = tx.region();
    if !merge_due(r, current_extent(r)?) {
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
    let r = tx.region();
    let g = *r.geometry();
    let now = current_extent(r)?;
    if !merge_due(r, now) {
        return Ok(false);
    }
    let before = now.shrunk();
    let (last, into) = (before.groups(), before.split());
    // Each head's first and last name in the group given back, and its filter.
    let mut ends = [(0u64, 0u64); l::GROUP_HEADS as usize];
    let mut filters = [0u64; l::GROUP_HEADS as usize];
    let mut total = 0;
    let mut words = [0u64; l::GROUP_HEADS as usize];
    r.words(head_offset(&g, last, 0), &mut words)?;
    warm(r, words.map(|w| Head(w).first()));
    for (head, &word) in (0..l::GROUP_HEADS).zip(&words) {
        let word = Head(word);
        filters[head as usize] = word.filter();
        let mut chain = Chain::starting_at(r, word.first());
        while let Some((at, _)) = chain.step_hash()? {
            total += 1;
            if total > SPLIT_LIMIT {
                return Ok(false);
            }
            let end = &mut ends[head as usize];
            if end.0 == 0 {
                end.0 = at;
            }
            end.1 = at;
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
