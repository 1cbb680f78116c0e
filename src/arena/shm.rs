//! The shm object behind an arena: a file in the backing directory (`/dev/shm` unless told
//! otherwise), created exclusively, fully reserved, and mapped shared.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// Environment variable that overrides the default backing directory.
pub const SHM_DIR_ENV: &str = "NODESHM_SHM_DIR";
/// The default backing directory.
pub const DEFAULT_SHM_DIR: &str = "/dev/shm";

/// The backing directory: the explicit one, else `$NODESHM_SHM_DIR`, else `/dev/shm`.
pub fn backing_dir(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(SHM_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SHM_DIR))
}

/// Checks an shm object name: one path component of 1..=255 bytes.
pub(crate) fn validate_object_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() || name.len() > 255 {
        Some(format!(
            "shm names are 1 to 255 bytes, this one is {}",
            name.len()
        ))
    } else if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        Some("shm names are one file name: no '/', no NUL, not '.' or '..'".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Size and free bytes (for unprivileged users) of the file system holding `dir`.
pub fn backing_space(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let fragment = st.fragment_size() as u64;
    Some((
        st.blocks() as u64 * fragment,
        st.blocks_available() as u64 * fragment,
    ))
}

pub(crate) fn available_bytes(dir: &Path) -> Option<u64> {
    backing_space(dir).map(|(_, free)| free)
}

/// What kind of file system a backing directory is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    /// tmpfs (`/dev/shm`): 4 KiB pages, or transparent huge pages when the mount allows.
    Tmpfs,
    /// hugetlbfs: every page is a huge page of this many bytes.
    Hugetlbfs { page_size: u64 },
    /// Anything else (a disk file system works, but is not memory).
    Other,
}

/// The kind of file system holding `dir`.
pub fn backing_kind(dir: &Path) -> BackingKind {
    match nix::sys::statfs::statfs(dir) {
        Ok(st) if st.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC => {
            BackingKind::Hugetlbfs {
                page_size: st.block_size() as u64,
            }
        }
        Ok(st) if st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => BackingKind::Tmpfs,
        _ => BackingKind::Other,
    }
}

/// Free huge pages of the default size, from /proc/meminfo.
fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The error for a hugetlbfs arena that does not fit in the free huge pages.
pub(crate) fn huge_pages_error(dir: &Path, size: u64, page_size: u64) -> Error {
    let needed = size.div_ceil(page_size);
    let free = free_huge_pages();
    Error::Placement(format!(
        "cannot reserve {needed} huge pages of {} for a {} arena in {}: {free} are free \
         (HugePages_Free); reserve more as root (echo {} > /proc/sys/vm/nr_hugepages) or use \
         transparent huge pages instead",
        crate::error::human_bytes(page_size),
        crate::error::human_bytes(size),
        dir.display(),
        needed + free,
    ))
}

/// Creates `path` exclusively with exactly `mode` and sets its size to `size` (not reserved
/// yet: see [`reserve`]). The caller removes the file if a later step fails.
pub(crate) fn create(path: &Path, mode: u32, size: u64) -> Result<File> {
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
    let fd =
        nix::fcntl::open(path, flags, Mode::from_bits_truncate(mode)).map_err(|e| match e {
            Errno::EEXIST => Error::AlreadyExists(format!("shm object {}", path.display())),
            Errno::ENOENT => Error::io(
                format!(
                    "creating {} (does the backing directory exist? set {SHM_DIR_ENV} or the \
                 backing directory option)",
                    path.display()
                ),
                e,
            ),
            e => Error::io(format!("creating {}", path.display()), e),
        })?;
    let file = File::from(fd);
    let setup = || -> Result<()> {
        // umask may have cleared bits the caller asked for (e.g. 0660 for a group).
        nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode))
            .map_err(|e| Error::io(format!("setting mode {mode:o} on {}", path.display()), e))?;
        file.set_len(size)
            .map_err(|e| Error::io(format!("sizing {} to {size} bytes", path.display()), e))
    };
    if let Err(e) = setup() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// Reserves bytes `offset..offset + len` of `file` (an arena of `total` bytes) now, so that a
/// full backing file system (or too few huge pages) is an error here rather than a SIGBUS on
/// first touch. Pages are allocated by the calling process under the memory policy already set
/// on the mapping: that is how NUMA placement and first touch are applied.
pub(crate) fn reserve(file: &File, path: &Path, offset: u64, len: u64, total: u64) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let too_large = || Error::InvalidArgument(format!("arena size {total} is too large"));
    let (off, n) = (
        i64::try_from(offset).map_err(|_| too_large())?,
        i64::try_from(len).map_err(|_| too_large())?,
    );
    match nix::fcntl::posix_fallocate(file.as_fd(), off, n) {
        Ok(()) => Ok(()),
        Err(Errno::ENOSPC) | Err(Errno::EFBIG) | Err(Errno::ENOMEM) => match backing_kind(dir) {
            BackingKind::Hugetlbfs { page_size } => Err(huge_pages_error(dir, total, page_size)),
            _ => Err(Error::NoSpaceInBacking {
                dir: dir.to_path_buf(),
                requested: total,
                available: available_bytes(dir).unwrap_or(0),
            }),
        },
        Err(e) => Err(Error::io(
            format!("reserving {len} bytes at {offset} of {}", path.display()),
            e,
        )),
    }
}

/// Opens an existing shm object read-write; `Ok(None)` when it does not exist (yet).
pub(crate) fn open_existing(path: &Path, writable: bool) -> Result<Option<File>> {
    let access = if writable {
        OFlag::O_RDWR
    } else {
        OFlag::O_RDONLY
    };
    match nix::fcntl::open(path, access | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::EACCES) => Err(Error::io(
            format!(
                "opening {} (it belongs to another user or its mode does not let you in)",
                path.display()
            ),
            Errno::EACCES,
        )),
        Err(e) => Err(Error::io(format!("opening {}", path.display()), e)),
    }
}

/// Removes a named shm object; a missing one is not an error (someone else unlinked it).
pub(crate) fn unlink(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("unlinking {}", path.display()), e)),
    }
}

/// This process's start time in clock ticks since boot, from /proc (0 if unreadable).
pub fn process_start_time(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Field 2 (comm) may contain spaces and parentheses: count fields after the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
