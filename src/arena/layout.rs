//! The in-arena layout ([`LAYOUT_VERSION`]). Everything here is `#[repr(C)]`, addressed by
//! offsets from the start of the shm object, and validated on attach. Changing any of it means
//! bumping [`LAYOUT_VERSION`]: an attacher of another version gets a clear error instead of
//! misreading.
//!
//! ```text
//! 0               Header (identity, locks, heap metadata, undo log)
//! buckets_offset  name directory: bucket_count words in 64-byte groups, each the version of
//!                 its group then 7 heads of entry chains (offset | filter << 48); the
//!                 groups in use grow with the names (`Meta::extent`), the rest stay empty
//! heap_offset     TLSF heap: blocks of [prev_phys u64][size|flags u64][payload...]; named
//!                 blocks hold [name][padding][data]; chunks of 32 directory slots (Entry),
//!                 carved from the top end of the largest free block (never freed)
//! heap_end-16     sentinel block header (size 0, used)
//! ```

use std::mem::offset_of;

/// First 8 bytes of every arena.
pub const MAGIC: [u8; 8] = *b"NODESHM\0";
/// Bumped whenever anything in this file changes meaning.
pub const LAYOUT_VERSION: u32 = 13;

/// `init_state` values.
pub const INIT_READY: u32 = 1;

/// TLSF geometry: 16-byte granules, 16 second-level classes per power of two.
pub const ALIGN_LOG2: u32 = 4;
pub const ALIGN: u64 = 1 << ALIGN_LOG2;
pub const SL_LOG2: u32 = 4;
pub const SL_COUNT: usize = 1 << SL_LOG2;
pub const FL_SHIFT: u32 = SL_LOG2 + ALIGN_LOG2;
pub const SMALL_BLOCK: u64 = 1 << FL_SHIFT;
/// Enough first-level classes for arenas below 2^48 bytes.
pub const FL_COUNT: usize = 48 - FL_SHIFT as usize + 1;
pub const MAX_ARENA_SIZE: u64 = 1 << 48;

/// Words one metadata update may change (an allocate changes about 30).
pub const UNDO_CAPACITY: u64 = 256;

pub const LABEL_LEN: usize = 256;
/// Bytes of a lock slot's mutex (glibc's `pthread_mutex_t` takes 40 on 64-bit Linux).
pub const MUTEX_SLOT: usize = 48;

/// A robust mutex and the pid of its holder in one cache line: every update writes both, and
/// another core's next update then pulls one line instead of two.
#[repr(C, align(64))]
pub struct LockSlot {
    pub mutex: [u8; MUTEX_SLOT],
    /// Pid of the holder (0: free), told to those who time out waiting.
    pub holder_pid: u32,
    pub reserved: [u32; 3],
}

/// The undo log and the counters that updates change outside it, from one cache line on: an
/// update writes the log's length and first entries and, at its commit, the counters.
#[repr(C, align(64))]
pub struct Log {
    pub undo_len: u64,
    /// Counters applied at commit and recounted by a recovery (see `undo::Counter`).
    pub live_blocks: u64,
    pub requested: u64,
    /// Heap bytes (headers included) of the blocks parked on `Meta::parked` (see
    /// `recycle.rs`): counted in `used` by the heap, free to the user.
    pub parked_bytes: u64,
    pub undo: [[u64; 2]; UNDO_CAPACITY as usize],
}

/// The arena header. Immutable fields are written by the creator before `init_state` becomes
/// READY; the rest are accessed atomically by offset (see `region.rs`).
#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub layout_version: u32,
    pub header_size: u32,
    pub size: u64,
    pub creator_pid: u32,
    pub unlink_policy: u32,
    /// Creator's start time in clock ticks since boot (/proc/PID/stat field 22): guards against
    /// pid reuse when deciding whether the creator is gone.
    pub creator_start_time: u64,
    pub job_token: u64,
    pub init_state: u32,
    pub attach_count: u32,
    pub created_unix_secs: u64,
    pub bucket_count: u64,
    pub buckets_offset: u64,
    pub heap_offset: u64,
    pub heap_end: u64,
    /// What the arena is for (allocator name, scope instance), NUL-padded UTF-8.
    pub label: [u8; LABEL_LEN],
    /// Placement actually applied (NUL-padded UTF-8), written by the manager.
    pub placement: [u8; LABEL_LEN],
    pub lock: LockSlot,
    pub user_lock: LockSlot,
    pub unlinked: u32,
    /// With the after-attach policy: attachers (besides the creator) to wait for.
    pub expected_peers: u32,
    /// Set (to 1) when a recovery found the undo log damaged: the metadata cannot be trusted,
    /// and every later locker gets `Corrupted` instead of working on it.
    pub damaged: u32,
    /// Handles attached beyond the recorded slots (counted, but not checked for being alive).
    pub untracked_attachers: u32,
    pub recoveries: u64,
    pub meta: Meta,
    pub log: Log,
    /// Who is attached: (pid, start time) per slot, pid 0 = free. A handle that drops counts
    /// only attachers still alive, so a killed process does not keep an `OnLastDetach` name.
    pub attachers: [[u64; 2]; ATTACHER_SLOTS],
}

/// Size classes of parked blocks: payloads up to `PARK_CLASSES * ALIGN` bytes are parked.
pub const PARK_CLASSES: usize = 64;
/// Lists of parked slots per size class, each kept in address order: one per rank for up to
/// four ranks (layout 13; two lists, one line a class, in layout 11). With four ranks on two
/// lists their releases interleaved and most went in out of order: in full 4-rank benchmark
/// jobs new names at 1,000 live then read 270 ns against 146 with four lists, the same names
/// 381 against 331; with two ranks the second line costs 0-10 ns
/// (docs/performance-notes.md).
pub const PARK_LISTS: usize = 4;

/// The parked slots of one size class: `PARK_LISTS` lists linked by the slots' `next`, each
/// `[head, tail, head's block, tail's block]` (the tail means nothing while the head is 0), in
/// the two cache lines that a take and a park read. The lists are ordered by their blocks'
/// offsets; the block words are hints (see `recycle.rs`).
#[repr(C, align(64))]
pub struct ParkedClass {
    pub lists: [[u64; 4]; PARK_LISTS],
}

/// The directory is `bucket_count` words in groups of one cache line: word 0 of a group is
/// its version, odd while an update under the arena lock changes one of the group's chains and
/// bumped again when it ends (or is rolled back); lock-free lookups read it before and after
/// and trust a miss (or a slot they found) only if it did not change. No update logs or rolls
/// back a version. The other 7 words are chain heads: the first slot's offset in the low 48
/// bits, and in the high 16 a filter with one bit per hash tag of the names linked into the
/// chain (layout 10; see `Head` in `directory/extent.rs`). A lookup reads its chain's head
/// and its version from one line, and an update writes both in one line.
pub const GROUP_WORDS: u64 = 8;
/// Chain heads per group.
pub const GROUP_HEADS: u64 = GROUP_WORDS - 1;

/// Attached processes recorded by pid and start time; more attach, uncounted for that purpose
/// (they are counted in `attach_count` only).
pub const ATTACHER_SLOTS: usize = 256;

/// How many directory groups are in use: the directory grows by linear hashing, one group
/// split per insert that leaves fewer than 1 chain per name, up to all of its groups, and
/// shrinks by one per removal that leaves more than 4, down to 8. A line of its own: every
/// lock-free lookup reads it, and only a split or a merge writes it.
#[repr(C, align(64))]
pub struct Extent {
    /// `level << 32 | split`: groups `0..2^level + split` are in use, and a name whose hash
    /// gives group `g = h mod 2^level` lives in group `h mod 2^(level+1)` when `g < split`
    /// (that group was split already).
    pub word: u64,
    pub reserved: [u64; 7],
}

/// Heap and directory metadata changed under the lock, one u64 word each.
#[repr(C)]
pub struct Meta {
    pub extent: Extent,
    pub used: u64,
    pub high_water: u64,
    /// Everything in the heap from here to the sentinel has never been written: still zero from
    /// the kernel, so allocations there need no zeroing.
    pub pristine_from: u64,
    /// Head of the list of free directory slots (0: none; a new chunk is carved then).
    pub slot_free: u64,
    /// Directory slots carved so far (they are never given back to the heap).
    pub slots: u64,
    /// Per size class, lists of removed names' slots that keep their heap block, for the next
    /// name of that size (class `i`: payloads of `(i + 1) * ALIGN` bytes; see `recycle.rs`).
    pub parked: [ParkedClass; PARK_CLASSES],
    pub fl_bitmap: u64,
    pub sl_bitmap: [u64; FL_COUNT],
    pub heads: [u64; FL_COUNT * SL_COUNT],
}

const _: () = assert!(std::mem::size_of::<nix::libc::pthread_mutex_t>() <= MUTEX_SLOT);
const _: () = assert!(std::mem::size_of::<LockSlot>() == 64);
const _: () = assert!(offset_of!(Header, lock) % 64 == 0);
const _: () = assert!(offset_of!(Header, user_lock) % 64 == 0);
const _: () = assert!(offset_of!(Header, log) % 64 == 0);
const _: () = assert!(std::mem::size_of::<ParkedClass>() == 32 * PARK_LISTS);

/// Bytes of the arena header (the smallest file that can be an arena).
pub const HEADER_SIZE: u64 = std::mem::size_of::<Header>() as u64;

macro_rules! off {
    ($($f:tt)+) => {
        offset_of!(Header, $($f)+) as u64
    };
}

pub const MAGIC_OFF: u64 = off!(magic);
pub const VERSION_OFF: u64 = off!(layout_version);
pub const SIZE: u64 = off!(size);
pub const CREATOR_PID: u64 = off!(creator_pid);
pub const CREATOR_START: u64 = off!(creator_start_time);
pub const JOB_TOKEN: u64 = off!(job_token);
pub const INIT_STATE: u64 = off!(init_state);
pub const ATTACH_COUNT: u64 = off!(attach_count);
pub const CREATED_SECS: u64 = off!(created_unix_secs);
pub const BUCKET_COUNT: u64 = off!(bucket_count);
pub const BUCKETS: u64 = off!(buckets_offset);
pub const HEAP_OFFSET: u64 = off!(heap_offset);
pub const HEAP_END: u64 = off!(heap_end);
pub const LABEL: u64 = off!(label);
pub const PLACEMENT: u64 = off!(placement);
pub const LOCK: u64 = off!(lock.mutex);
pub const USER_LOCK: u64 = off!(user_lock.mutex);
pub const LOCK_HOLDER: u64 = off!(lock.holder_pid);
pub const UNLINKED: u64 = off!(unlinked);
pub const EXPECTED_PEERS: u64 = off!(expected_peers);
pub const DAMAGED: u64 = off!(damaged);
pub const USER_LOCK_HOLDER: u64 = off!(user_lock.holder_pid);
/// The bytes of the two process-shared mutexes, as (offset, length). glibc reads and writes
/// them itself while a process is inside a pthread call, so the arena can check them only
/// between calls (the kind word, before each one: damage at rest). Tools and tests that damage
/// a live arena leave them alone; every other byte must stay checkable.
pub const MUTEX_BYTES: [(u64, u64); 2] =
    [(LOCK, MUTEX_SLOT as u64), (USER_LOCK, MUTEX_SLOT as u64)];
pub const UNTRACKED: u64 = off!(untracked_attachers);
pub const RECOVERIES: u64 = off!(recoveries);
pub const USED: u64 = off!(meta.used);
pub const EXTENT: u64 = off!(meta.extent.word);
pub const LIVE_BLOCKS: u64 = off!(log.live_blocks);
pub const REQUESTED: u64 = off!(log.requested);
pub const HIGH_WATER: u64 = off!(meta.high_water);
pub const PRISTINE_FROM: u64 = off!(meta.pristine_from);
pub const SLOT_FREE: u64 = off!(meta.slot_free);
pub const SLOTS: u64 = off!(meta.slots);
pub const PARKED_BYTES: u64 = off!(log.parked_bytes);
pub const PARKED: u64 = off!(meta.parked);
pub const FL_BITMAP: u64 = off!(meta.fl_bitmap);
pub const SL_BITMAP: u64 = off!(meta.sl_bitmap);
pub const HEADS: u64 = off!(meta.heads);
pub const UNDO_LEN: u64 = off!(log.undo_len);
pub const UNDO_ENTRIES: u64 = off!(log.undo);
const _: () = assert!(UNDO_ENTRIES % 8 == 0 && UNDO_ENTRIES + UNDO_CAPACITY * 16 <= HEADER_SIZE);
pub const ATTACHERS: u64 = off!(attachers);
/// Bytes of one attacher record: its pid, then its start time.
const ATTACHER_RECORD: u64 = std::mem::size_of::<[u64; 2]>() as u64;
/// Offset of the start time within an attacher record (the pid is at 0).
pub const ATTACHER_STARTED: u64 = 8;
/// Offset of attacher record `i` (below `ATTACHER_SLOTS`).
pub const fn attacher_record(i: u64) -> u64 {
    ATTACHERS + i * ATTACHER_RECORD
}
/// The index of the attacher record at `record` (an offset [`attacher_record`] gave).
pub const fn attacher_index(record: u64) -> u64 {
    record.saturating_sub(ATTACHERS) / ATTACHER_RECORD
}
/// `header_size` and `unlink_policy` share words with neighbours; read them as u32.
pub const HEADER_SIZE_OFF: u64 = off!(header_size);
pub const UNLINK_POLICY: u64 = off!(unlink_policy);

/// A named block's directory entry: a slot of its own, carved with others from a heap chunk
/// that is never given back, so that memory which once held a slot always holds a slot. A
/// lock-free reader holding a stale offset therefore only ever touches some slot's words, and
/// the generation in `state` tells it whether the slot is still the one it read.
///
/// The block's name is at the start of its heap block (`block`), followed by padding up to the
/// block's alignment and then the user's data (`data_offset`). Its first [`NAME_HEAD`] bytes
/// are in the slot too (layout 12), so that a lookup compares a name of up to 16 bytes in the
/// slot's own line: a process that finds a name another core just made, or one made long
/// ago, then waits for one line fewer.
#[repr(C)]
pub struct Entry {
    /// Next entry of the bucket chain, next free slot, or next parked slot of its class.
    pub next: u64,
    pub hash: u64,
    /// `generation << 32 | PENDING | references`: changed only by compare-and-swap (and by
    /// the logged write that starts a new generation), so references are taken and dropped
    /// without the arena lock.
    pub state: u64,
    pub data_offset: u64,
    /// Bytes asked for in the low [`SIZE_BITS`] bits, the name's length in the high 16: one
    /// word, so that the two are always written together.
    pub size_and_name_len: u64,
    /// Payload offset of the heap block holding the name and the data.
    pub block: u64,
    /// The name's first [`NAME_HEAD`] bytes as they are in the block, zero after its end.
    pub name_head: [u64; 2],
}
pub const ENTRY_SIZE: u64 = std::mem::size_of::<Entry>() as u64;
pub const E_NEXT: u64 = offset_of!(Entry, next) as u64;
pub const E_HASH: u64 = offset_of!(Entry, hash) as u64;
pub const E_STATE: u64 = offset_of!(Entry, state) as u64;
pub const E_DATA: u64 = offset_of!(Entry, data_offset) as u64;
pub const E_SIZE: u64 = offset_of!(Entry, size_and_name_len) as u64;
pub const E_BLOCK: u64 = offset_of!(Entry, block) as u64;
pub const E_NAME_HEAD: u64 = offset_of!(Entry, name_head) as u64;
/// Bits of [`Entry::size_and_name_len`] that hold the size: 256 TiB, more than any arena.
pub const SIZE_BITS: u32 = 48;
/// Bytes of a name kept in its slot.
pub const NAME_HEAD: u64 = 16;
/// Slots carved at once from one heap chunk.
pub const SLOTS_PER_CHUNK: u64 = 32;
const _: () = assert!(ENTRY_SIZE == 64);

/// Rounds `value` up to a multiple of the power of two `align`.
pub const fn round_up(value: u64, align: u64) -> u64 {
    (value + align - 1) & !(align - 1)
}

/// Where the directory and the heap start in an arena of `size` bytes (a multiple of the page
/// size): `(bucket_count, buckets_offset, heap_offset)`. Written once, used by creation and by
/// every size check.
pub fn geometry(size: u64, expected_names: Option<u64>) -> (u64, u64, u64) {
    let buckets = expected_names
        .unwrap_or(size / (16 << 10))
        .clamp(64, 1 << 22)
        .next_power_of_two();
    let buckets_offset = round_up(HEADER_SIZE, 64);
    let heap_offset = round_up(buckets_offset + buckets * 8, 64);
    (buckets, buckets_offset, heap_offset)
}

/// The smallest arena size that holds the header, a directory for `expected_names` and a
/// first heap block, before rounding to the page size.
pub fn minimum_size(expected_names: Option<u64>) -> u64 {
    let (_, _, heap_offset) = geometry(0, expected_names);
    heap_offset + 4096
}

/// Where the directory and the heap lie: read from the header and checked once (attach,
/// inspection), then kept by the process, so that later damage to those words cannot move any
/// walk or write outside the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub size: u64,
    pub bucket_count: u64,
    pub buckets_offset: u64,
    pub heap_offset: u64,
    pub heap_end: u64,
}

/// The heap metadata an update changes (`Meta`): everything from `used` to the undo log.
const META_START: u64 = off!(meta);
const META_END: u64 = off!(log);

impl Geometry {
    /// Reads and checks the geometry words of a header (read with `word`, by offset) of an
    /// arena of `size` bytes; `Err` says what is wrong.
    pub(crate) fn read(size: u64, word: impl Fn(u64) -> Option<u64>) -> Result<Geometry, String> {
        let read =
            |off: u64, what: &str| word(off).ok_or_else(|| format!("cannot read its {what}"));
        let buckets = read(BUCKET_COUNT, "directory size")?;
        let buckets_at = read(BUCKETS, "directory offset")?;
        let heap = read(HEAP_OFFSET, "heap offset")?;
        let heap_end = read(HEAP_END, "heap end")?;
        let undo = read(UNDO_LEN, "undo log length")?;
        let ok = size <= MAX_ARENA_SIZE
            && buckets.is_power_of_two()
            && buckets >= GROUP_WORDS
            && buckets_at >= HEADER_SIZE
            && buckets_at % (GROUP_WORDS * 8) == 0
            && buckets
                .checked_mul(8)
                .and_then(|b| b.checked_add(buckets_at))
                .is_some_and(|end| end <= heap)
            && heap % ALIGN == 0
            && heap_end == size
            && heap.checked_add(64).is_some_and(|h| h < heap_end)
            && heap_end % ALIGN == 0
            && undo <= UNDO_CAPACITY;
        if ok {
            Ok(Geometry {
                size,
                bucket_count: buckets,
                buckets_offset: buckets_at,
                heap_offset: heap,
                heap_end,
            })
        } else {
            Err(format!(
                "its geometry is inconsistent (directory of {buckets} at {buckets_at}, heap \
                 {heap}..{heap_end} in {size} bytes, undo log {undo}): damaged or not an arena"
            ))
        }
    }

    /// Groups of the directory (see [`GROUP_WORDS`]): a power of two, at least one.
    #[inline]
    pub(crate) fn groups(&self) -> u64 {
        self.bucket_count / GROUP_WORDS
    }

    /// Offset of the sentinel block header that ends the heap.
    pub(crate) fn sentinel(&self) -> u64 {
        self.heap_end - 16
    }

    /// The most blocks (or directory entries, or free-list links) the heap can hold: the bound
    /// of every walk, so that a cycle in damaged metadata ends in an error, not a hang.
    pub(crate) fn max_blocks(&self) -> u64 {
        (self.heap_end - self.heap_offset) / 32 + 1
    }

    /// Whether an update may change the word at `off`. The heap first: most logged words are
    /// heap links (every new name logs about 11 words).
    #[inline(always)]
    pub(crate) fn writable(&self, off: u64) -> bool {
        let within = |start: u64, end: u64| off >= start && off <= end.saturating_sub(8);
        within(self.heap_offset, self.heap_end)
            || within(
                self.buckets_offset,
                self.buckets_offset + self.bucket_count * 8,
            )
            || within(META_START, META_END)
    }
}
