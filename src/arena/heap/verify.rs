//! The heap's own check: a walk of every block and free list, for `Arena::verify` and the
//! tools. Bounded by the heap's size, whatever the words say.

use super::{damaged, flags, head_off, mapping, next_phys, size_of_block, sl_off, FREE, HDR};
use super::{MIN_PAYLOAD, PREV_FREE};
use crate::arena::layout::{self as l, ALIGN, SL_COUNT};
use crate::arena::region::Mem;
use crate::error::Result;

/// Walks every block and free list and checks that they agree: blocks tile the heap exactly,
/// no two free blocks touch, flags and back links match, every free block is on the list of
/// its class, the bitmaps match the lists, and `used` matches the blocks in use.
pub(crate) fn verify<M: Mem + ?Sized>(r: &M) -> Result<HeapReport> {
    let bad = |msg: String| Err(damaged(msg));
    let g = *r.geometry();
    let sentinel = g.sentinel();
    let mut report = HeapReport::default();
    let mut b = g.heap_offset;
    let mut prev_free: Option<u64> = None;
    // Every block has a header and a payload of at least 16 bytes, so the walk ends by itself;
    // next_phys refuses any step past the sentinel or overflowing.
    while b != sentinel {
        let size = size_of_block(r, b)?;
        let f = flags(r, b)?;
        let next = next_phys(r, b)?;
        if size < MIN_PAYLOAD {
            return bad(format!("block {b} has an impossible size {size}"));
        }
        if (f & PREV_FREE != 0) != prev_free.is_some() {
            return bad(format!(
                "block {b}: PREV_FREE flag disagrees with its neighbour"
            ));
        }
        if let Some(p) = prev_free {
            if r.load(b)? != p {
                return bad(format!("block {b}: back link {} should be {p}", r.load(b)?));
            }
        }
        if f & FREE != 0 {
            if let Some(p) = prev_free {
                return bad(format!("free blocks at {p} and {b} were not merged"));
            }
            report.free_blocks += 1;
            report.free_bytes += size + HDR;
            report.largest_free = report.largest_free.max(size);
            prev_free = Some(b);
        } else {
            report.used_blocks += 1;
            report.used_bytes += size + HDR;
            prev_free = None;
        }
        b = next;
    }
    if (flags(r, sentinel)? & PREV_FREE != 0) != prev_free.is_some() {
        return bad("sentinel PREV_FREE flag disagrees with the last block".into());
    }
    if report.used_bytes != r.load(l::USED)? {
        return bad(format!(
            "blocks in use hold {} bytes but the counter says {}",
            report.used_bytes,
            r.load(l::USED)?
        ));
    }
    let mut listed = 0;
    let flmap = r.load(l::FL_BITMAP)?;
    if flmap >> l::FL_COUNT != 0 {
        return bad(format!("the heap's class bitmap {flmap:#x} is impossible"));
    }
    for fl in 0..l::FL_COUNT {
        let slmap = r.load(sl_off(fl))?;
        if (flmap >> fl & 1 == 1) != (slmap != 0) {
            return bad(format!(
                "first-level bitmap bit {fl} disagrees with its second level"
            ));
        }
        for sl in 0..SL_COUNT {
            let mut b = r.load(head_off(fl, sl))?;
            if (slmap >> sl & 1 == 1) != (b != 0) {
                return bad(format!("bitmap bit ({fl},{sl}) disagrees with its list"));
            }
            let mut prev = 0;
            while b != 0 {
                if b < g.heap_offset || b >= sentinel || b % ALIGN != 0 || flags(r, b)? & FREE == 0
                {
                    return bad(format!(
                        "free list ({fl},{sl}) holds block {b} that is not free"
                    ));
                }
                if mapping(size_of_block(r, b)?) != (fl, sl) || r.load(b + HDR + 8)? != prev {
                    return bad(format!("free list ({fl},{sl}) is mislinked at block {b}"));
                }
                listed += 1;
                if listed > report.free_blocks {
                    return bad("free lists hold more blocks than the heap".into());
                }
                prev = b;
                b = r.load(b + HDR)?;
            }
        }
    }
    if listed != report.free_blocks {
        return bad(format!(
            "{} free blocks but {listed} on the free lists",
            report.free_blocks
        ));
    }
    Ok(report)
}

/// What [`Arena::verify`](crate::arena::Arena::verify) counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeapReport {
    /// Blocks in use (parked blocks not counted).
    pub used_blocks: u64,
    /// Bytes they take, headers included.
    pub used_bytes: u64,
    /// Blocks of removed names parked for reuse by the next name of their size.
    pub parked_blocks: u64,
    /// Bytes they take, headers included.
    pub parked_bytes: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Bytes they hold, headers included.
    pub free_bytes: u64,
    /// The largest free payload.
    pub largest_free: u64,
}
