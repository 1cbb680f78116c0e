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
mod directory;
mod header;
mod heap;
mod inspect;
pub(crate) mod layout;
mod lock;
mod options;
mod region;
pub(crate) mod shm;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::libc;
use parking_lot::Mutex;

pub use block::Block;
/// The held user lock ([`Arena::lock_user`]).
pub type UserLock<'a> = LockGuard<'a>;
pub use directory::{EntryInfo, MAX_NAME_LEN};
pub use heap::HeapReport;
pub use inspect::{inspect, Inspected, Inspection};
pub use layout::{HEADER_SIZE, LAYOUT_VERSION, MAGIC};
pub use options::{HugePages, Options, Unlink};
pub use shm::{
    backing_dir, backing_kind, checked_regular, file_kind, open_for_reading, BackingKind,
    DEFAULT_SHM_DIR, SHM_DIR_ENV, SHM_PREFIX,
};

use crate::error::{Error, Result};
use header::HeaderState;
use layout as l;
pub use lock::LockGuard;
use region::{Mem, Region, Tx};

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
    /// `capacity - used`.
    pub free: u64,
    /// The largest block that can still be allocated in one piece (payload bytes).
    pub largest_free: u64,
    /// Named blocks alive.
    pub live_blocks: u64,
    /// Sum of the sizes asked for by the live blocks.
    pub requested: u64,
    /// Highest `used` ever seen.
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
    /// Handles attached now (as counted in the arena).
    pub attach_count: u32,
    /// Whether its name was removed already.
    pub unlinked: bool,
    /// What it is for (allocator name and scope instance).
    pub label: String,
    /// The memory placement applied at creation.
    pub placement: String,
    /// Size of the name directory.
    pub bucket_count: u64,
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
    /// References this process holds: data offset -> (entry offset, count).
    held: Mutex<HeldMap>,
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

/// Hashes the arena offsets used as keys of the per-process reference map: they are distinct
/// multiples of 16, so one multiply spreads them well and is cheaper than SipHash.
#[derive(Default, Clone, Copy)]
struct OffsetHasher(u64);

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
        self.0 = (v >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type HeldMap = HashMap<u64, (u64, u64), std::hash::BuildHasherDefault<OffsetHasher>>;

/// Entries returned by `entries()` at most: what the heap could hold anyway.
const ALL: u64 = u64::MAX;

impl Arena {
    /// Creates a new arena named `name` in the backing directory and returns the owner's
    /// handle. The whole size is reserved up front.
    ///
    /// Fails with `AlreadyExists` if the name is taken, `NoSpaceInBacking` if the backing file
    /// system cannot hold `options.size` bytes, `InvalidArgument` for a size too small for the
    /// header and directory, `Placement` when huge pages were required and are not available.
    pub fn create(name: &str, options: &Options) -> Result<Arena> {
        Self::create_with(name, options, |_| Ok(()))
    }

    /// Like [`Arena::create`], and `place` runs on the new mapping after it is mapped and before
    /// any of its pages exist (they are allocated right after, by the reservation): the place to
    /// set a NUMA memory policy on it. An error from `place` aborts the creation.
    pub fn create_with(
        name: &str,
        options: &Options,
        place: impl FnOnce(&[u8]) -> Result<()>,
    ) -> Result<Arena> {
        shm::validate_object_name(name)?;
        shm::validate_mode(options.mode)?;
        let dir = shm::backing_dir(options.dir.as_deref());
        let page = match (shm::backing_kind(&dir), options.huge) {
            (shm::BackingKind::Hugetlbfs { page_size }, _) => page_size,
            (kind, HugePages::Required) => {
                return Err(Error::Placement(format!(
                    "HugePages::Required needs a hugetlbfs backing directory, and {} is {}; \
                     mount one (mount -t hugetlbfs none /dev/hugepages) and pass it as the \
                     directory, or use HugePages::Transparent",
                    dir.display(),
                    if kind == shm::BackingKind::Tmpfs {
                        "tmpfs"
                    } else {
                        "not hugetlbfs"
                    }
                )))
            }
            _ => page_size(),
        };
        let size = options
            .size
            .max(1)
            .checked_next_multiple_of(page)
            .filter(|&s| s < l::MAX_ARENA_SIZE)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "arena size {} bytes is above the {} this layout supports; give a size from \
                     {} to that",
                    options.size,
                    crate::sys::human_bytes(l::MAX_ARENA_SIZE - page),
                    crate::sys::human_bytes(layout::minimum_size(options.expected_names)),
                ))
            })?;
        let (buckets, buckets_offset, heap_offset) = layout::geometry(size, options.expected_names);
        let geo = layout::Geometry {
            size,
            bucket_count: buckets,
            buckets_offset,
            heap_offset,
            heap_end: size,
        };
        let minimum = heap_offset + 4096;
        if size < minimum {
            return Err(Error::InvalidArgument(format!(
                "an arena of {size} bytes is too small: the header and a directory of {buckets} \
                 names take {heap_offset} bytes; ask for at least {minimum} bytes"
            )));
        }
        let path = dir.join(name);
        let file = shm::create(&path, options.mode, size)?;
        let prepared = Self::map(file, path.clone(), true, options, geo).and_then(|arena| {
            // SAFETY: the file was just created with O_EXCL and has no header yet, so no other
            // process uses this memory; `place` gets it only to name the address range (hwloc
            // binds by address) and the slice does not outlive this call.
            let fresh = unsafe {
                std::slice::from_raw_parts(
                    arena.region.base().as_ptr(),
                    arena.region.len() as usize,
                )
            };
            place(fresh)?;
            if options.reserve_at_create {
                shm::reserve(&arena._file, &path, 0, size, size)?;
            } else {
                // Only what creation writes: header, directory, first heap block, sentinel.
                shm::reserve(
                    &arena._file,
                    &path,
                    0,
                    layout::round_up(heap_offset + 64, page),
                    size,
                )?;
                shm::reserve(&arena._file, &path, size - page, page, size)?;
            }
            Ok(arena)
        });
        let mut arena = prepared.inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
        let r = arena.region;
        let (policy, peers) = options.unlink.encode();
        let pid = std::process::id();
        r.word32(l::VERSION_OFF)
            .store(l::LAYOUT_VERSION, std::sync::atomic::Ordering::Release);
        r.word32(l::HEADER_SIZE_OFF)
            .store(l::HEADER_SIZE as u32, std::sync::atomic::Ordering::Release);
        r.store(l::SIZE, size)?;
        r.word32(l::CREATOR_PID)
            .store(pid, std::sync::atomic::Ordering::Release);
        r.word32(l::UNLINK_POLICY)
            .store(policy, std::sync::atomic::Ordering::Release);
        r.word32(l::EXPECTED_PEERS)
            .store(peers, std::sync::atomic::Ordering::Release);
        r.store(l::CREATOR_START, shm::process_start_time(pid))?;
        r.store(l::JOB_TOKEN, options.job_token)?;
        r.word32(l::ATTACH_COUNT)
            .store(1, std::sync::atomic::Ordering::Release);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        r.store(l::CREATED_SECS, now)?;
        r.store(l::BUCKET_COUNT, buckets)?;
        r.store(l::BUCKETS, buckets_offset)?;
        r.store(l::HEAP_OFFSET, heap_offset)?;
        r.store(l::HEAP_END, size)?;
        r.write_bytes(l::LABEL, &header::encode_str(&options.label))?;
        // SAFETY: both mutex slots are inside the fresh mapping, 16-byte aligned (checked at
        // compile time in layout.rs) and not yet visible to any other process.
        unsafe {
            lock::init(arena.mutex(l::LOCK))?;
            lock::init(arena.mutex(l::USER_LOCK))?;
        }
        heap::init(&r)?;
        r.write_bytes(l::MAGIC_OFF, &l::MAGIC)?;
        r.word32(l::INIT_STATE)
            .store(l::INIT_READY, std::sync::atomic::Ordering::Release);
        arena.ready = true;
        if let Unlink::AfterAttach { peers: 0 } = options.unlink {
            arena.unlink()?;
        }
        Ok(arena)
    }

    /// Attaches to the arena `name` in the default backing directory, waiting up to `timeout`
    /// for it to appear and finish initialising.
    pub fn attach(name: &str, timeout: Duration) -> Result<Arena> {
        Self::attach_with(name, &Options::new(0).attach_timeout(timeout))
    }

    /// Attaches with explicit options (backing directory, timeouts; the size is ignored).
    ///
    /// Fails with `Timeout` if the name does not appear or never becomes ready in time,
    /// `NotAnArena` for a file that is not one (or is truncated), `Incompatible` for another
    /// layout version.
    pub fn attach_with(name: &str, options: &Options) -> Result<Arena> {
        shm::validate_object_name(name)?;
        let path = shm::backing_dir(options.dir.as_deref()).join(name);
        Self::attach_path(&path, options)
    }

    fn attach_path(path: &Path, options: &Options) -> Result<Arena> {
        let timeout = options.attach_timeout;
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        let mut last_state = "does not exist";
        loop {
            let trust = shm::Trust {
                uids: &options.trusted_uids,
                gids: &options.trusted_gids,
            };
            if let Some(file) = shm::open_existing(path, true, &trust)? {
                match Self::check_ready(&file, path)? {
                    Ok(geo) => {
                        let arena = Self::map(file, path.to_path_buf(), false, options, geo)?;
                        arena.count_attach()?;
                        return Ok(arena);
                    }
                    Err(state) => last_state = state,
                }
            }
            if start.elapsed() >= timeout {
                let len = std::fs::metadata(path).map(|m| m.len()).ok();
                return Err(match (last_state, len) {
                    ("does not exist", _) | (_, None) => Error::Timeout {
                        what: format!("waiting for arena {} to appear", path.display()),
                        waited: timeout,
                        hint: "check that its creator runs with the same backing directory and \
                               name, or raise the attach timeout"
                            .into(),
                    },
                    (state, Some(len)) if len < l::HEADER_SIZE => Error::NotAnArena {
                        path: path.to_path_buf(),
                        reason: format!(
                            "{state}: it has {len} bytes, fewer than an arena header \
                             ({} bytes), and did not grow within {:.1} s",
                            l::HEADER_SIZE,
                            timeout.as_secs_f64()
                        ),
                    },
                    (state, Some(_)) => Error::NotAnArena {
                        path: path.to_path_buf(),
                        reason: format!(
                            "{state} after {:.1} s: its creator died while creating it, or it \
                             is some other file",
                            timeout.as_secs_f64()
                        ),
                    },
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// `Ok(geometry)` when the file is a ready arena of our layout; `Err(state)` while it may
    /// still be being created; an error when it can never become one.
    fn check_ready(
        file: &File,
        path: &Path,
    ) -> Result<std::result::Result<layout::Geometry, &'static str>> {
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len();
        match header::check(file, len) {
            HeaderState::Ready(geo) => Ok(Ok(geo)),
            HeaderState::NotReady(state) => Ok(Err(state)),
            HeaderState::OtherVersion(version) => Err(Error::Incompatible {
                path: path.to_path_buf(),
                reason: format!(
                    "it has layout version {version}, this nodeshm reads version {}; use the \
                     nodeshm version that created it",
                    l::LAYOUT_VERSION
                ),
            }),
            HeaderState::Bad(reason) => Err(Error::NotAnArena {
                path: path.to_path_buf(),
                reason,
            }),
        }
    }

    fn map(
        file: File,
        path: PathBuf,
        creator: bool,
        options: &Options,
        geo: layout::Geometry,
    ) -> Result<Arena> {
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let page = match shm::backing_kind(dir) {
            shm::BackingKind::Hugetlbfs { page_size } => page_size,
            _ => page_size(),
        };
        let map = memmap2::MmapOptions::new().map_raw(&file).map_err(|e| {
            match (e.raw_os_error(), shm::backing_kind(dir)) {
                (Some(libc::ENOMEM), shm::BackingKind::Hugetlbfs { page_size }) => {
                    shm::huge_pages_error(dir, meta.len(), page_size)
                }
                _ => Error::io(
                    format!("mapping {} ({} bytes)", path.display(), meta.len()),
                    e,
                ),
            }
        })?;
        if options.huge == HugePages::Transparent {
            // Advice only: whether tmpfs then uses huge pages depends on its mount (huge=) and
            // /sys/kernel/mm/transparent_hugepage/shmem_enabled; placement() reports the outcome.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let base = std::ptr::NonNull::new(map.as_mut_ptr()).expect("mmap never returns null");
        if map.len() as u64 != geo.size {
            return Err(Error::NotAnArena {
                path,
                reason: format!(
                    "it changed size while being attached ({} bytes, the header says {})",
                    map.len(),
                    geo.size
                ),
            });
        }
        // SAFETY: the mapping is page-aligned, readable and writable, `map.len()` bytes long (the
        // size whose header the geometry check read, so at least a header), and lives in `_map`
        // for as long as the Arena (and so every Region copy it hands out).
        let region = unsafe { Region::new(base, map.len() as u64, geo) };
        Ok(Arena {
            _map: map,
            _file: file,
            region,
            path,
            identity: (meta.dev(), meta.ino()),
            creator,
            ready: !creator,
            pid: std::process::id(),
            page,
            lock_timeout: options.lock_timeout,
            held: Mutex::new(HeldMap::default()),
        })
    }

    fn count_attach(&self) -> Result<()> {
        let count = self.region.word32(l::ATTACH_COUNT);
        let now = count
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            .wrapping_add(1);
        if let Unlink::AfterAttach { peers } = self.info().unlink {
            if now > peers {
                self.unlink()?;
            }
        }
        Ok(())
    }

    fn mutex(&self, off: u64) -> *mut libc::pthread_mutex_t {
        assert!(off + l::MUTEX_SLOT as u64 <= l::HEADER_SIZE);
        // SAFETY: a header field: inside every mapping (see Region::new).
        unsafe { self.region.base().as_ptr().add(off as usize).cast() }
    }

    /// Runs `update` under the arena lock as one transaction: either all of it happens or none.
    fn locked<T>(&self, update: impl FnOnce(&mut Tx) -> Result<T>) -> Result<T> {
        let r = self.region;
        // SAFETY: the arena mutex was initialised before the arena became ready; the mapping
        // (and so the holder word) outlives this call.
        let guard = unsafe {
            lock::acquire(
                self.mutex(l::LOCK),
                r.word32(l::LOCK_HOLDER),
                self.pid,
                self.lock_timeout,
                "arena lock",
            )?
        };
        let damaged = || {
            Error::Corrupted(
                "a process that died holding the arena lock left an undo log that fails its \
                 checks, so the heap and directory cannot be trusted; recreate the arena"
                    .into(),
            )
        };
        if guard.previous_owner_died() {
            let rolled_back = r.roll_back();
            // The lock itself is made usable again either way; a log that fails its checks is
            // damage, recorded so that every later locker gets the same error instead of
            // working on bad metadata.
            if rolled_back.is_err() {
                r.word32(l::DAMAGED)
                    .store(1, std::sync::atomic::Ordering::Release);
            } else {
                r.store(l::RECOVERIES, r.header(l::RECOVERIES).wrapping_add(1))?;
            }
            guard.make_consistent();
            rolled_back?;
        }
        if r.word32(l::DAMAGED)
            .load(std::sync::atomic::Ordering::Acquire)
            != 0
        {
            return Err(damaged());
        }
        let mut tx = Tx::begin(&self.region);
        let value = update(&mut tx)?;
        tx.commit();
        drop(guard);
        Ok(value)
    }

    /// Returns the block `name` of `bytes` bytes aligned to 64 bytes, creating it (zeroed) if it
    /// does not exist; takes one reference. O(1) expected.
    ///
    /// Fails with `SizeMismatch` if the name exists with another size, `OutOfSpace` when it does
    /// not fit, `InvalidName`/`InvalidArgument` for a bad name or a size of 0.
    pub fn allocate(&self, name: &str, bytes: u64) -> Result<Block<'_>> {
        self.allocate_aligned(name, bytes, 64)
    }

    /// Like [`Arena::allocate`] with an explicit alignment: a power of two up to the page size.
    /// An existing block must already be that aligned.
    pub fn allocate_aligned(&self, name: &str, bytes: u64, align: u64) -> Result<Block<'_>> {
        directory::validate_name(name)?;
        if bytes == 0 {
            return Err(Error::InvalidArgument(format!(
                "block {name:?}: size 0; ask for at least 1 byte"
            )));
        }
        let page = page_size();
        if !align.is_power_of_two() || align > page {
            return Err(Error::InvalidArgument(format!(
                "block {name:?}: alignment {align} is not a power of two up to the page size {page}"
            )));
        }
        let align = align.max(l::ALIGN);
        let key = name.as_bytes();
        let h = directory::hash(key);
        let mut held = self.held.lock();
        let (entry, created) = self.locked(|tx| {
            let r = *tx.region();
            if let Some(e) = directory::lookup(&r, key, h)? {
                let existing = r.load(e + l::E_SIZE)?;
                if existing != bytes {
                    return Err(Error::SizeMismatch {
                        name: name.into(),
                        existing,
                        requested: bytes,
                    });
                }
                let data = r.load(e + l::E_DATA)?;
                if data % align != 0 {
                    return Err(Error::InvalidArgument(format!(
                        "block {name:?} exists at offset {data}, which is not {align}-byte aligned; \
                         every process must ask for it with the same alignment"
                    )));
                }
                directory::data_of(&r, e, align)?;
                take_reference(tx, e)?;
                Ok((e, false))
            } else {
                Ok((directory::insert(tx, key, h, bytes, align)?, true))
            }
        })?;
        let (data, size) = directory::data_of(&self.region, entry, align)?;
        let block = self.block(data, size, created)?;
        held.entry(data).or_insert((entry, 0)).1 += 1;
        Ok(block)
    }

    /// The block `name` if it exists, taking one reference (release it with
    /// [`Arena::deallocate`]); never creates one.
    pub fn find(&self, name: &str) -> Result<Option<Block<'_>>> {
        directory::validate_name(name)?;
        let key = name.as_bytes();
        let h = directory::hash(key);
        let mut held = self.held.lock();
        let found = self.locked(|tx| {
            let r = *tx.region();
            match directory::lookup(&r, key, h)? {
                Some(e) => {
                    let data = directory::data_of(&r, e, l::ALIGN)?;
                    take_reference(tx, e)?;
                    Ok(Some((e, data)))
                }
                None => Ok(None),
            }
        })?;
        let Some((entry, (data, size))) = found else {
            return Ok(None);
        };
        let block = self.block(data, size, false)?;
        held.entry(data).or_insert((entry, 0)).1 += 1;
        Ok(Some(block))
    }

    /// Information about block `name` without taking a reference (for inspection only).
    pub fn lookup(&self, name: &str) -> Result<Option<EntryInfo>> {
        directory::validate_name(name)?;
        let key = name.as_bytes();
        let h = directory::hash(key);
        self.locked(|tx| {
            let r = *tx.region();
            match directory::lookup(&r, key, h)? {
                Some(e) => Ok(Some(directory::read_entry(&r, e)?)),
                None => Ok(None),
            }
        })
    }

    fn block(&self, data: u64, bytes: u64, created: bool) -> Result<Block<'_>> {
        Ok(Block::new(
            self.region.ptr(data, bytes)?,
            bytes,
            data,
            created,
        ))
    }

    /// Drops one of this process's references to `block`; the last reference anywhere frees the
    /// block and its name.
    ///
    /// Fails with `NotHeld` when this process holds no reference to it (a block of another
    /// arena, or released more often than taken): nothing is changed then.
    pub fn deallocate(&self, block: Block<'_>) -> Result<()> {
        self.deallocate_offset(block.offset())
    }

    /// Like [`Arena::deallocate`], by the block's data pointer (for the C API).
    pub fn deallocate_ptr(&self, ptr: *const u8) -> Result<()> {
        let base = self.region.base().as_ptr() as usize;
        let addr = ptr as usize;
        if addr < base || addr >= base + self.region.len() as usize {
            return Err(Error::NotHeld {
                what: format!("pointer {ptr:p}"),
                detail: format!(
                    "it is not inside this arena ({:#x}..{:#x}); pass a pointer that allocate \
                     returned from this allocator",
                    base,
                    base + self.region.len() as usize
                ),
            });
        }
        self.deallocate_offset((addr - base) as u64)
    }

    fn deallocate_offset(&self, data: u64) -> Result<()> {
        let mut held = self.held.lock();
        let Some(&(entry, count)) = held.get(&data) else {
            return Err(Error::NotHeld {
                what: format!("the block at offset {data}"),
                detail: "this process holds no reference to it (released already, or never \
                         allocated here); each allocate or find is released exactly once"
                    .into(),
            });
        };
        self.locked(|tx| {
            let r = *tx.region();
            if r.load(entry + l::E_DATA)? != data {
                return Err(Error::Corrupted(format!(
                    "the entry of the block at offset {data} changed while this process held it"
                )));
            }
            let refs = r.load(entry + l::E_REFCOUNT)?;
            if refs <= 1 {
                directory::remove(tx, entry)
            } else {
                tx.set(entry + l::E_REFCOUNT, refs - 1)
            }
        })?;
        if count <= 1 {
            held.remove(&data);
        } else {
            held.insert(data, (entry, count - 1));
        }
        Ok(())
    }

    /// Gives one of this process's references to `block` to the arena itself: the block then
    /// outlives this process (and its handle's drop) for as long as the arena exists. For
    /// publishing data in persistent arenas (`Unlink::Never`) that tools read later.
    ///
    /// Fails with `NotHeld` when this process holds no reference to it.
    pub fn persist(&self, block: Block<'_>) -> Result<()> {
        let mut held = self.held.lock();
        let data = block.offset();
        match held.get_mut(&data) {
            Some((_, count)) if *count > 1 => *count -= 1,
            Some(_) => {
                held.remove(&data);
            }
            None => {
                return Err(Error::NotHeld {
                    what: format!("the block at offset {data}"),
                    detail: "this process holds no reference to it to give away".into(),
                })
            }
        }
        Ok(())
    }

    /// Usage figures. Takes the lock briefly.
    pub fn stats(&self) -> Result<Stats> {
        self.locked(|tx| header::stats(tx.region()))
    }

    /// Bytes in use (Umpire's `getActualSize`): blocks with their metadata.
    pub fn actual_size(&self) -> Result<u64> {
        Ok(self.stats()?.used)
    }

    /// Every named block with its offset, size and total refcount.
    pub fn entries(&self) -> Result<Vec<EntryInfo>> {
        self.locked(|tx| Ok(directory::entries(tx.region(), ALL)?.0))
    }

    /// Checks the heap and directory for consistency (under the lock); returns the heap counts.
    pub fn verify(&self) -> Result<HeapReport> {
        self.locked(|tx| {
            let report = heap::verify(tx.region())?;
            directory::verify(tx.region())?;
            Ok(report)
        })
    }

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

    /// Removes the arena's name from the backing directory; mappings stay valid. Idempotent, and
    /// never removes a different file that took the name since.
    pub fn unlink(&self) -> Result<()> {
        let still_ours = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.identity)
            .unwrap_or(false);
        if still_ours {
            shm::unlink(&self.path)?;
        }
        self.region
            .word32(l::UNLINKED)
            .store(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Reserves (allocates) the arena's pages in `offset..offset + len`, rounded out to whole
    /// pages, in this process: for arenas created with `reserve_at_create(false)`, whose
    /// processes reserve their own shares in parallel (and so place them by first touch).
    /// Fails with `NoSpaceInBacking` (or `Placement` on hugetlbfs) naming the whole arena.
    pub fn reserve(&self, offset: u64, len: u64) -> Result<()> {
        let start = offset / self.page * self.page;
        let end = layout::round_up(offset.saturating_add(len), self.page).min(self.region.len());
        if start >= end {
            return Ok(());
        }
        shm::reserve(
            &self._file,
            &self.path,
            start,
            end - start,
            self.region.len(),
        )
    }

    /// Bytes of the arena's memory allocated so far (reserved pages), from the file's block count.
    pub fn reserved_bytes(&self) -> Result<u64> {
        self._file
            .metadata()
            .map(|m| m.blocks() * 512)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))
    }

    /// The page size of the arena's memory (the huge page size on hugetlbfs).
    pub fn page_size(&self) -> u64 {
        self.page
    }

    /// Maps every page of the arena into this process's page tables now (the pages themselves
    /// exist since the reservation), so that later accesses take no page faults. Returns how
    /// long it took. Uses MADV_POPULATE_READ, or reads one byte per page on kernels without it.
    pub fn populate(&self) -> Result<Duration> {
        let start = Instant::now();
        let base = self.region.base().as_ptr();
        let len = self.region.len() as usize;
        // SAFETY: the range is exactly this process's live mapping; POPULATE_READ only faults
        // pages in, it changes no contents.
        let rc = unsafe { libc::madvise(base.cast(), len, libc::MADV_POPULATE_READ) };
        if rc != 0 {
            let step = page_size() as usize;
            for off in (0..len).step_by(step) {
                // SAFETY: `off` is inside the mapping; a volatile read of one byte per page
                // only faults the page in. Races with writers are harmless for a discarded byte
                // read through a raw pointer (no reference is formed).
                unsafe { std::ptr::read_volatile(base.add(off)) };
            }
        }
        Ok(start.elapsed())
    }

    /// Records the memory placement that was applied (shown by `nodeshm stat`).
    pub fn set_placement(&self, text: &str) {
        let _ = self
            .region
            .write_bytes(l::PLACEMENT, &header::encode_str(text));
    }

    /// Takes the arena's user lock (a second robust mutex, separate from the metadata lock),
    /// waiting at most `timeout`. Use it to guard your own data in the arena. The guard stays
    /// on this thread; `previous_owner_died()` tells when its last holder died holding it.
    ///
    /// Fails with `Timeout` (naming the holder's pid) when it is not free in time.
    pub fn lock_user(&self, timeout: Duration) -> Result<UserLock<'_>> {
        // SAFETY: the user mutex was initialised before the arena became ready; the guard
        // borrows `self`, so the mapping outlives it.
        let guard = unsafe {
            lock::acquire(
                self.mutex(l::USER_LOCK),
                self.region.word32(l::USER_LOCK_HOLDER),
                self.pid,
                timeout,
                "user lock",
            )?
        };
        if guard.previous_owner_died() {
            // The user is told through the guard; the mutex itself is usable again.
            guard.make_consistent();
        }
        Ok(guard)
    }

    /// Releases the user lock held by this thread through a guard that was
    /// [`leak`](UserLock::leak)ed (the C ABI's unlock). `NotHeld` when this thread does not
    /// hold it; nothing changes then.
    ///
    /// # Safety
    /// No guard of this thread may still hold the user lock (it would unlock it again on drop).
    pub unsafe fn force_unlock_user(&self) -> Result<()> {
        // SAFETY: forwarded contract; the mutex is initialised and mapped.
        unsafe {
            lock::force_unlock(
                self.mutex(l::USER_LOCK),
                self.region.word32(l::USER_LOCK_HOLDER),
                "user lock",
            )
        }
    }

    /// Test support: takes the arena lock, starts creating block `name` and stops halfway
    /// (some metadata words changed, the update not committed), calls `halted`, then sleeps
    /// forever. Tests kill the process at that point to check crash recovery.
    #[doc(hidden)]
    pub fn __halt_mid_update(&self, name: &str, bytes: u64, halted: impl FnOnce()) -> Result<()> {
        self.locked(|tx| {
            let key = name.as_bytes();
            directory::insert(tx, key, directory::hash(key), bytes, 64)?;
            halted();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        })
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if !self.ready {
            return;
        }
        let held: Vec<(u64, u64)> = self
            .held
            .lock()
            .iter()
            .map(|(&d, &(_, c))| (d, c))
            .collect();
        for (data, count) in held {
            for _ in 0..count {
                if self.deallocate_offset(data).is_err() {
                    break;
                }
            }
        }
        let remaining = self
            .region
            .word32(l::ATTACH_COUNT)
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            .wrapping_sub(1);
        let unlink = match self.info().unlink {
            Unlink::OnLastDetach => remaining == 0,
            // The creator never leaves a name behind that peers failed to attach to.
            Unlink::AfterAttach { .. } => self.creator,
            Unlink::Never => false,
        };
        if unlink {
            let _ = self.unlink();
        }
    }
}

/// Takes one more reference to entry `e` (the caller holds the lock).
fn take_reference(tx: &mut Tx, e: u64) -> Result<()> {
    let refs = tx.get(e + l::E_REFCOUNT)?;
    let more = refs.checked_add(1).filter(|_| refs > 0).ok_or_else(|| {
        Error::Corrupted(format!("entry at {e} has an impossible refcount {refs}"))
    })?;
    tx.set(e + l::E_REFCOUNT, more)
}
