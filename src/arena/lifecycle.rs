//! An arena's life: creating it (exclusively, reserved, initialised), attaching to it (through
//! the trust and header checks), mapping it, and what dropping a handle does (releasing this
//! process's references, detaching, applying the unlink policy).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::libc;

use super::header::{self, HeaderState};
use super::layout as l;
use super::region::{Mem, Region};
use super::{
    heap, lock, page_size, shm, Arena, HeldMap, HeldRefs, HugePages, Options, Reservation, Unlink,
};
use crate::error::{Error, Result};

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
                    crate::sys::human_bytes(l::minimum_size(options.expected_names)),
                ))
            })?;
        let (buckets, buckets_offset, heap_offset) = l::geometry(size, options.expected_names);
        let geo = l::Geometry {
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
                    l::round_up(heap_offset + 64, page),
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
        arena.record_attacher();
        heap::init(&r)?;
        r.store(
            l::EXTENT,
            super::directory::Extent::initial(r.geometry().groups()).0,
        )?;
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
                        let mut arena = Self::map(file, path.to_path_buf(), false, options, geo)?;
                        arena.record_attacher();
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
    ) -> Result<std::result::Result<l::Geometry, &'static str>> {
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
        geo: l::Geometry,
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
            reservation: options.reservation,
            held: HeldRefs::new(HeldMap::default()),
            slot: None,
        })
    }

    /// Records this handle in the attacher record: a free slot, else one whose process is gone;
    /// with none left the handle is counted as untracked.
    fn record_attacher(&mut self) {
        use std::sync::atomic::{AtomicU64, Ordering};
        let r = self.region;
        let me = u64::from(self.pid);
        let start = shm::process_start_time(self.pid);
        let word = |off: u64| -> Option<&AtomicU64> { r.atomic_header(off) };
        for pass in 0..2 {
            for i in 0..l::ATTACHER_SLOTS as u64 {
                let slot = l::attacher_record(i);
                let (Some(pid), Some(started)) = (word(slot), word(slot + l::ATTACHER_STARTED))
                else {
                    continue;
                };
                let current = pid.load(Ordering::Acquire);
                let free = current == 0
                    || (pass == 1
                        && !shm::process_alive(current as u32, started.load(Ordering::Acquire)));
                if free
                    && pid
                        .compare_exchange(current, me, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    started.store(start, Ordering::Release);
                    self.slot = Some(slot);
                    return;
                }
            }
        }
        r.word32(l::UNTRACKED).fetch_add(1, Ordering::AcqRel);
    }

    /// Removes this handle from the attacher record; returns whether another attached process
    /// is still alive (recorded and running, or untracked).
    fn forget_attacher(&self) -> bool {
        use std::sync::atomic::Ordering;
        let r = self.region;
        match self.slot {
            Some(slot) => {
                if let (Some(pid), Some(started)) = (
                    r.atomic_header(slot),
                    r.atomic_header(slot + l::ATTACHER_STARTED),
                ) {
                    started.store(0, Ordering::Release);
                    pid.store(0, Ordering::Release);
                }
            }
            None => {
                let _ =
                    r.word32(l::UNTRACKED)
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
        }
        if r.word32(l::UNTRACKED).load(Ordering::Acquire) > 0 {
            return true;
        }
        header::info(&r)
            .attachers
            .iter()
            .any(|&(pid, start)| shm::process_alive(pid, start))
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
    /// pages, in this process, the way [`Options::reservation`] says: for arenas created with
    /// `reserve_at_create(false)`, whose processes reserve their own shares in parallel (and so
    /// place them by first touch). Fails with `NoSpaceInBacking` (or `Placement` on hugetlbfs)
    /// naming the whole arena.
    pub fn reserve(&self, offset: u64, len: u64) -> Result<()> {
        let start = offset / self.page * self.page;
        let end = l::round_up(offset.saturating_add(len), self.page).min(self.region.len());
        if start >= end {
            return Ok(());
        }
        let total = self.region.len();
        let fallocate = || shm::reserve(&self._file, &self.path, start, end - start, total);
        match self.reservation {
            Reservation::Auto if end - start < super::options::POPULATE_FROM => fallocate(),
            Reservation::Auto => self.populate_write(start, end, fallocate),
            Reservation::Fallocate => fallocate(),
            Reservation::Populate => self.populate_write(start, end, fallocate),
            Reservation::FallocateThenPopulate => {
                fallocate()?;
                self.populate_write(start, end, || Ok(()))
            }
        }
    }

    /// `MADV_POPULATE_WRITE` over `start..end` (page-aligned, inside the mapping); `fallback`
    /// where the kernel does not have it. A page that cannot be allocated is an error here,
    /// where a write would have been a SIGBUS.
    fn populate_write(
        &self,
        start: u64,
        end: u64,
        fallback: impl Fn() -> Result<()>,
    ) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        for _ in 0..16 {
            // SAFETY: `start..end` lies inside this process's live mapping (clamped by the
            // caller); POPULATE_WRITE allocates and maps pages without changing their contents.
            let rc = unsafe {
                libc::madvise(
                    self.region.base().as_ptr().add(start as usize).cast(),
                    (end - start) as usize,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // Kernels before 5.14 (or a mapping it does not support).
                Some(libc::EINVAL) => return fallback(),
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                // EFAULT: the fault would have raised SIGBUS (the file system is full).
                Some(libc::EFAULT) | Some(libc::ENOMEM) | Some(libc::ENOSPC) => {
                    return Err(shm::no_space(dir, self.region.len()))
                }
                _ => {
                    return Err(Error::io(
                        format!(
                            "populating {} bytes at {start} of {}",
                            end - start,
                            self.path.display()
                        ),
                        err,
                    ))
                }
            }
        }
        fallback()
    }

    /// Bytes of the arena's memory allocated so far (reserved pages), from the file's block count.
    pub fn reserved_bytes(&self) -> Result<u64> {
        self._file
            .metadata()
            .map(|m| m.blocks() * 512)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))
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
            .map(|(&d, h)| (d, h.count))
            .collect();
        for (data, count) in held {
            for _ in 0..count {
                if self.deallocate_offset(data).is_err() {
                    break;
                }
            }
        }
        self.region
            .word32(l::ATTACH_COUNT)
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        // Counted by who is alive, not by the counter: a killed attacher never decremented it.
        let others_alive = self.forget_attacher();
        let unlink = match self.info().unlink {
            Unlink::OnLastDetach => !others_alive,
            // The creator never leaves a name behind that peers failed to attach to.
            Unlink::AfterAttach { .. } => self.creator,
            Unlink::Never => false,
        };
        if unlink {
            let _ = self.unlink();
        }
    }
}
