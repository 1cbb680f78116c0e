//! One fixed-size shared-memory arena in one POSIX shm object, usable by any number of processes
//! with or without MPI: a header, a TLSF heap, a name directory and a robust lock.
//!
//! ```no_run
//! use std::time::Duration;
//! use nodeshm::arena::{Arena, Options, Unlink};
//! # fn main() -> nodeshm::Result<()> {
//! // The owner creates it...
//! let owner = Arena::create("nodeshm-example", &Options::new(64 << 20).unlink(Unlink::OnLastDetach))?;
//! let table = owner.allocate("table", 1 << 20)?;
//! // ...and any other process attaches by name, waiting at most 10 s for it to appear.
//! let user = Arena::attach("nodeshm-example", Duration::from_secs(10))?;
//! let same = user.allocate("table", 1 << 20)?; // same name, same size: the same memory
//! assert_eq!(table.offset(), same.offset());
//! # Ok(()) }
//! ```

mod block;
mod blocks;
mod directory;
mod header;
mod heap;
mod held;
mod inspect;
pub(crate) mod layout;
mod lifecycle;
mod lock;
mod options;
mod recycle;
mod region;
pub(crate) mod shm;
#[cfg(test)]
mod tests;
mod undo;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use block::Block;
/// The held user lock ([`Arena::lock_user`]).
pub type UserLock<'a> = LockGuard<'a>;
pub use directory::{EntryInfo, MAX_NAME_LEN};
pub use heap::HeapReport;
pub use inspect::{inspect, Inspected, Inspection};
pub use layout::{HEADER_SIZE, LAYOUT_VERSION, MAGIC, MUTEX_BYTES};
pub use options::{HugePages, Options, Reservation, Unlink, POPULATE_FROM};
pub use shm::{
    backing_dir, backing_kind, checked_regular, file_kind, open_for_reading, BackingKind,
    DEFAULT_SHM_DIR, SHM_DIR_ENV, SHM_PREFIX,
};

use held::{Held, HeldMap, HeldRefs};
pub use lock::LockGuard;
use region::{Mem, Region};

/// Usage figures of an arena, read under its lock. `#[repr(C)]`: it is also the C API's
/// `nodeshm_stats_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stats {
    /// Bytes the heap can hand out in total (the arena minus header and directory).
    pub capacity: u64,
    /// Bytes in use, including each block's header, name and alignment padding.
    pub used: u64,
    /// `capacity - used`. Includes the blocks of removed names that are parked for the next
    /// name of their size (blocks of payloads up to 1 KiB: see [`Arena::coalesce`]).
    pub free: u64,
    /// The largest free block of the heap (payload bytes). Parked blocks are merged back when
    /// an allocation does not fit, which may make room for a larger one;
    /// [`Arena::coalesce`] first gives the heap's shape after that.
    pub largest_free: u64,
    /// Named blocks alive.
    pub live_blocks: u64,
    /// Sum of the sizes asked for by the live blocks.
    pub requested: u64,
    /// Highest `used` ever seen (parked blocks counted).
    pub high_water: u64,
    /// How often a process found the lock's owner dead and repaired the metadata.
    pub recoveries: u64,
}

/// What an arena's header says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ArenaInfo {
    /// Layout version ([`LAYOUT_VERSION`] for arenas this version can use).
    pub layout_version: u32,
    /// Total size in bytes.
    pub size: u64,
    /// Pid of the creating process.
    pub creator_pid: u32,
    /// The creator's start time (clock ticks since boot), to tell a reused pid.
    pub creator_start_time: u64,
    /// The job token of the manager that made it (0 for plain arenas).
    pub job_token: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix_secs: u64,
    /// When its name goes.
    pub unlink: Unlink,
    /// Handles attached now (as counted in the arena, killed processes included).
    pub attach_count: u32,
    /// The attached processes the arena records, (pid, start time), alive or not: test them
    /// with [`crate::sys::process_alive`].
    pub attachers: Vec<(u32, u64)>,
    /// Whether its name was removed already.
    pub unlinked: bool,
    /// What it is for (allocator name and scope instance).
    pub label: String,
    /// The memory placement applied at creation.
    pub placement: String,
    /// Chains of the name directory (7 of every 8 of its words; the 8th is a version): the
    /// most it grows to.
    pub bucket_count: u64,
    /// Chains in use now: they follow the live names (four to sixteen chains per name, at
    /// least 56, at most `bucket_count`). 0 if the directory's extent is damaged.
    pub chains_in_use: u64,
}

/// A process's handle on one arena. Dropping it releases the references this process still
/// holds, detaches, and applies the unlink policy.
pub struct Arena {
    _map: memmap2::MmapRaw,
    /// Kept open so that tools can reach the arena through `/proc/<pid>/fd` after it is unlinked.
    _file: File,
    region: Region,
    path: PathBuf,
    identity: (u64, u64),
    creator: bool,
    /// False while `create` is still initialising: dropping such a handle only unmaps.
    ready: bool,
    /// getpid() is a system call; the lock records the holder on every update.
    pid: u32,
    /// Page granularity of the backing file system.
    page: u64,
    lock_timeout: Duration,
    reservation: Reservation,
    /// References this process holds, by data offset.
    held: HeldRefs,
    /// This handle's slot in the attacher record (None: not recorded).
    slot: Option<u64>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("path", &self.path)
            .field("size", &self.region.len())
            .field("creator", &self.creator)
            .finish()
    }
}

/// The system page size.
pub fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |p| p as u64)
    })
}

/// Entries returned by `entries()` at most: what the heap could hold anyway.
const ALL: u64 = u64::MAX;

impl Arena {
    /// What the header says.
    pub fn info(&self) -> ArenaInfo {
        header::info(&self.region)
    }

    /// The arena's path in its backing directory (the name may be unlinked already).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The arena's total size in bytes (header included).
    pub fn size(&self) -> u64 {
        self.region.len()
    }

    /// Whether this handle created the arena.
    pub fn is_creator(&self) -> bool {
        self.creator
    }

    /// Base address of this process's mapping (differs between processes; offsets do not).
    pub fn base_ptr(&self) -> *mut u8 {
        self.region.base().as_ptr()
    }

    /// The page size of the arena's memory (the huge page size on hugetlbfs).
    pub fn page_size(&self) -> u64 {
        self.page
    }
}
