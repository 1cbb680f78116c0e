//! The name directory: a fixed array of chain heads in groups of one cache line, each group
//! with its version (see [`GROUP_WORDS`](crate::arena::layout::GROUP_WORDS)); a chain links
//! entries. An entry is a 64-byte slot (slots are carved from heap chunks that are never given
//! back); its name and the user's data share one heap block, and the slot keeps the name's
//! first 16 bytes, so that most names compare without the block. Lookups are O(1) expected.
//!
//! Only the groups the names need are in use ([`Extent`]): 8 at first, one more split (linear
//! hashing) by each insert that leaves fewer than 1 chain per name, until the whole array
//! is, and one merged back by each removal that leaves more than 4. So a few names live in a
//! few hot cache lines instead of lines scattered over a directory sized for the most names
//! the arena may hold, each cold on a name's first use. Each chain head also carries a filter
//! of its names' hash tags ([`Head`](extent::Head)), so that most lookups of a missing name
//! read no slot.
//!
//! Lookups and reference counting work without the arena lock: a reader walks the chain,
//! validated by its group's version (odd while an update changes a chain of the group, read
//! from the same line as the chain's head), and takes its reference
//! with a compare-and-swap on the slot's state word (generation, pending flag, references),
//! which fails if the slot was removed or reused meanwhile and never revives an entry whose
//! last reference went. Inserting and removing take the lock and the undo log, as before; a
//! process killed at any point leaves either a consistent directory or one that the next
//! locker repairs (the undo log; an entry without references is removed when met).
//!
//! | file | what |
//! |---|---|
//! | `names.rs` | what a name must be, its hash |
//! | `extent.rs` | the groups in use, the head a hash gives, head words |
//! | `slot.rs` | a slot's words and state, chain walks, name comparison |
//! | `lockfree.rs` | the lookup and reference counting without the lock |
//! | `update.rs` | lookup, insert and removal under the lock |
//! | `growth.rs` | splits and merges of groups |
//! | `walk.rs` | the whole-directory walk: listing, recount, verification |

mod extent;
mod growth;
mod lockfree;
mod names;
mod slot;
mod update;
mod walk;

#[cfg(test)]
pub(crate) use extent::head_of;
pub(crate) use extent::{extent, Extent};
#[cfg(test)]
pub(crate) use extent::{tag, CHAINS_PER_NAME};
pub(crate) use growth::shrink;
#[cfg(test)]
pub(crate) use lockfree::WAIT_FOR_CHAIN;
pub(crate) use lockfree::{
    drop_reference, lookup_fast, still_missing, take_reference, take_reference_now, wait_for_chain,
    Fast,
};
pub use names::MAX_NAME_LEN;
pub(crate) use names::{checked_hash, hash};
#[cfg(test)]
pub(crate) use slot::names_equal;
pub(crate) use slot::{data_of, read_slot, state, Slot, PENDING};
pub(crate) use update::{give_back, insert, lookup_locked, remove_dead};
#[cfg(test)]
pub(crate) use walk::each_entry;
pub use walk::EntryInfo;
pub(crate) use walk::{entries, entries_partial, read_entry, recount, verify};
