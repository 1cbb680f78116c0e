//! The shm object behind an arena: a file in the backing directory (`/dev/shm` unless told
//! otherwise), created exclusively, fully reserved, and mapped shared.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// Every shm object nodeshm makes is named with this prefix, so that anyone listing
/// `/dev/shm` recognises them; the command line lists exactly these names.
pub const SHM_PREFIX: &str = "nodeshm";

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
    Hugetlbfs {
        /// The huge page size in bytes.
        page_size: u64,
    },
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
        crate::sys::human_bytes(page_size),
        crate::sys::human_bytes(size),
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
/// The error for an arena of `total` bytes that the backing directory `dir` cannot hold.
pub(crate) fn no_space(dir: &Path, total: u64) -> Error {
    match backing_kind(dir) {
        BackingKind::Hugetlbfs { page_size } => huge_pages_error(dir, total, page_size),
        _ => Error::NoSpaceInBacking {
            dir: dir.to_path_buf(),
            requested: total,
            available: available_bytes(dir).unwrap_or(0),
        },
    }
}

pub(crate) fn reserve(file: &File, path: &Path, offset: u64, len: u64, total: u64) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let too_large = || Error::InvalidArgument(format!("arena size {total} is too large"));
    let (off, n) = (
        i64::try_from(offset).map_err(|_| too_large())?,
        i64::try_from(len).map_err(|_| too_large())?,
    );
    match nix::fcntl::posix_fallocate(file.as_fd(), off, n) {
        Ok(()) => Ok(()),
        Err(Errno::ENOSPC) | Err(Errno::EFBIG) | Err(Errno::ENOMEM) => Err(no_space(dir, total)),
        Err(e) => Err(Error::io(
            format!("reserving {len} bytes at {offset} of {}", path.display()),
            e,
        )),
    }
}

/// Who an attacher trusts besides itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust<'a> {
    pub(crate) uids: &'a [u32],
    pub(crate) gids: &'a [u32],
}

/// Opens an existing shm object; `Ok(None)` when it does not exist (yet).
///
/// The trust boundary of attaching: never follows a symlink, never blocks on a FIFO or device
/// (`O_NONBLOCK`), and checks the descriptor it opened (no check-then-open race): a regular file
/// owned by the caller's effective uid, or by a uid or group in `trust`.
pub(crate) fn open_existing(path: &Path, writable: bool, trust: &Trust) -> Result<Option<File>> {
    let access = if writable {
        OFlag::O_RDWR
    } else {
        OFlag::O_RDONLY
    };
    let flags = access | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
    let file = match nix::fcntl::open(path, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            return Err(Error::NotAnArena {
                path: path.to_path_buf(),
                reason: "it is a symbolic link; arenas are never reached through links".into(),
            })
        }
        Err(Errno::EACCES) => {
            return Err(Error::io(
                format!(
                    "opening {} (it belongs to another user or its mode does not let you in)",
                    path.display()
                ),
                Errno::EACCES,
            ))
        }
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let st = nix::sys::stat::fstat(file.as_fd())
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG {
        return Err(Error::NotAnArena {
            path: path.to_path_buf(),
            reason: format!("it is {}, not a regular file", file_kind(kind)),
        });
    }
    let uid = nix::unistd::geteuid().as_raw();
    if st.st_uid != uid && !trust.uids.contains(&st.st_uid) && !trust.gids.contains(&st.st_gid) {
        return Err(Error::Untrusted {
            path: path.to_path_buf(),
            owner: st.st_uid,
            group: st.st_gid,
            uid,
        });
    }
    Ok(Some(file))
}

/// Opens `name` in the directory `dir` read-only for inspection by a tool, the way a file we did
/// not create must be opened: no symlinks followed, never blocking (a FIFO or device opens and
/// is then refused), and the type checked on the descriptor itself, so that nothing swapped in
/// between a check and the open is ever read. `Err` says what the file is instead.
pub fn open_for_reading(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> std::result::Result<(File, nix::sys::stat::FileStat), String> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = match nix::fcntl::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ELOOP) => return Err("a symbolic link".into()),
        Err(e) => return Err(format!("cannot be opened: {e}")),
    };
    checked_regular(file)
}

/// Checks on the open descriptor that it is a regular file; returns it with its status.
pub fn checked_regular(
    file: File,
) -> std::result::Result<(File, nix::sys::stat::FileStat), String> {
    let st = nix::sys::stat::fstat(file.as_fd()).map_err(|e| format!("cannot be read: {e}"))?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG {
        return Err(file_kind(kind).to_string());
    }
    Ok((file, st))
}

/// "a directory", "a FIFO", ... for a `st_mode & S_IFMT` value.
pub fn file_kind(kind: libc::mode_t) -> &'static str {
    match kind {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFLNK => "a symbolic link",
        _ => "an unknown kind of file",
    }
}

/// Checks a creation mode: permission bits only, owner read and write kept.
pub(crate) fn validate_mode(mode: u32) -> Result<()> {
    if mode & !0o777 != 0 || mode & 0o600 != 0o600 {
        return Err(Error::InvalidArgument(format!(
            "mode {mode:#o}: give permission bits only (at most 0o777) with owner read and \
             write (0o600 or more), e.g. 0o600 or 0o660 for a trusted group"
        )));
    }
    Ok(())
}

/// Removes a named shm object; a missing one is not an error (someone else unlinked it).
pub(crate) fn unlink(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("unlinking {}", path.display()), e)),
    }
}

/// State (field 3) and start time (field 22, clock ticks since boot) of `pid`, from
/// `/proc/<pid>/stat`; `None` if there is no such process.
fn process_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may contain spaces and parentheses: count fields after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// A process's start time in clock ticks since boot, from /proc (0 if unreadable).
pub fn process_start_time(pid: u32) -> u64 {
    // This process's own, asked for at every create and attach, is read once per pid (a forked
    // child has a pid of its own, so it reads its own).
    static OWN: std::sync::Mutex<(u32, u64)> = std::sync::Mutex::new((0, 0));
    if pid != std::process::id() {
        return process_stat(pid).map_or(0, |(_, start)| start);
    }
    let mut own = OWN.lock().unwrap_or_else(|e| e.into_inner());
    if own.0 != pid || own.1 == 0 {
        *own = (pid, process_stat(pid).map_or(0, |(_, start)| start));
    }
    own.1
}

/// Whether `pid` is a running process (not a zombie) that started at `start_time` (0: any), so
/// that a reused pid is not taken for the process that was recorded.
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    pid != 0
        && process_stat(pid).is_some_and(|(state, start)| {
            !matches!(state, 'Z' | 'X' | 'x') && (start_time == 0 || start == start_time)
        })
}
