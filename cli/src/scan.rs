//! Finding arenas on this node: named ones in the backing directory, and unlinked ones still
//! mapped by live processes (from /proc/<pid>/maps), with who maps them and their state.
//!
//! Every file and every /proc entry may belong to someone hostile: files are identified by
//! (device, inode), never by path strings; they are opened without following links and without
//! blocking, their type checked on the descriptor; they are read with `pread`, never mapped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::libc;
use nix::sys::stat::Mode;
use nodeshm::arena::{
    checked_regular, inspect, open_for_reading, Inspected, Inspection, SHM_PREFIX,
};
use nodeshm::sys::process_alive as alive;
use serde::Serialize;

/// A file's identity: (device, inode).
pub type FileId = (u64, u64);

/// The backing directory, open: every name in it is resolved relative to this descriptor.
pub struct Dir {
    pub path: PathBuf,
    pub fd: OwnedFd,
    /// The device of its file system: an unlinked arena mapped from there has this device.
    pub dev: u64,
}

impl Dir {
    /// Opens `path` as a directory; `Err` when it is missing or not a directory.
    pub fn open(path: &Path) -> Result<Dir, String> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| {
            format!(
                "backing directory {}: {}",
                path.display(),
                match e {
                    nix::errno::Errno::ENOENT => "does not exist".to_string(),
                    nix::errno::Errno::ENOTDIR => "is not a directory".to_string(),
                    e => e.to_string(),
                }
            )
        })?;
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| e.to_string())?;
        Ok(Dir {
            path: path.to_path_buf(),
            fd,
            dev: st.st_dev,
        })
    }

    /// The identity of `name` in this directory right now (not following links).
    pub fn id_of(&self, name: &str) -> Option<(FileId, bool)> {
        let st =
            nix::sys::stat::fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        Some((
            (st.st_dev, st.st_ino),
            st.st_mode & libc::S_IFMT == libc::S_IFREG,
        ))
    }

    /// Removes `name` from this directory.
    pub fn unlink(&self, name: &str) -> nix::Result<()> {
        nix::unistd::unlinkat(
            self.fd.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
    }

    /// The names in the directory starting with the nodeshm prefix.
    fn names(&self) -> Vec<String> {
        use std::os::fd::AsRawFd;
        // Listed through our descriptor, so a directory renamed meanwhile is still this one.
        let listing = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        std::fs::read_dir(listing)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(SHM_PREFIX))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One mapping of a nodeshm file by a live process.
#[derive(Debug, Clone)]
struct Mapping {
    pid: u32,
    id: FileId,
    name: String,
    deleted: bool,
}

/// `major:minor` in hex, as /proc/<pid>/maps writes a device, to a `dev_t`.
fn parse_dev(text: &str) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    let (major, minor) = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    Some(libc::makedev(major, minor))
}

/// Every process's mappings of files named with the nodeshm prefix on the backing directory's file system.
fn mappings(dir: &Dir) -> Vec<Mapping> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        for line in maps.lines() {
            // address perms offset dev inode path
            let mut fields = line.splitn(6, ' ');
            let (Some(_), Some(_), Some(_), Some(dev), Some(inode), Some(path)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let (Some(dev), Ok(inode)) = (parse_dev(dev), inode.parse::<u64>()) else {
                continue;
            };
            let path = path.trim_start();
            let (path, deleted) = match path.strip_suffix(" (deleted)") {
                Some(p) => (p, true),
                None => (path, false),
            };
            let name = Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if dev == dir.dev && name.starts_with(SHM_PREFIX) && seen.insert(inode) {
                out.push(Mapping {
                    pid,
                    id: (dev, inode),
                    name,
                    deleted,
                });
            }
        }
    }
    out
}

/// Opens an unlinked arena through a process that maps it: an fd it keeps open (nodeshm keeps
/// one), else its map_files entry (needs CAP_SYS_ADMIN). Each link is `stat`ed first and opened
/// only when it is a regular file with the mapping's identity, non-blocking, and checked again
/// on the descriptor: a FIFO or a file swapped in meanwhile is never read.
fn open_through(pid: u32, id: FileId) -> Result<File, String> {
    let candidates = ["fd", "map_files"]
        .iter()
        .filter_map(|d| std::fs::read_dir(format!("/proc/{pid}/{d}")).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()));
    for link in candidates {
        let Ok(st) = nix::sys::stat::stat(&link) else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || (st.st_dev, st.st_ino) != id {
            continue;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let Ok(fd) = nix::fcntl::open(&link, flags, Mode::empty()) else {
            continue;
        };
        if let Ok((file, st)) = checked_regular(File::from(fd)) {
            if (st.st_dev, st.st_ino) == id {
                return Ok(file);
            }
        }
    }
    Err(format!(
        "process {pid} maps it but neither /proc/{pid}/fd nor /proc/{pid}/map_files gives access \
         (another user's process, or no CAP_SYS_ADMIN)"
    ))
}

/// What `ls` reports for one arena.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub shm_name: String,
    pub path: PathBuf,
    /// False for an arena already unlinked and reached through a process.
    pub named: bool,
    /// `live`, `idle`, `orphaned`, `foreign` or `unreadable`.
    pub state: &'static str,
    pub allocator: String,
    pub scope_instance: String,
    pub size: u64,
    pub used: u64,
    pub live_blocks: u64,
    pub job_token: String,
    pub creator_pid: u32,
    pub creator_alive: bool,
    pub attached_pids: Vec<u32>,
    /// Live processes the arena's own attacher record lists (pid and start time checked).
    pub recorded_attachers: Vec<u32>,
    pub owner_uid: u32,
    pub device: u64,
    pub inode: u64,
    /// For foreign or unreadable files: what they are / why they could not be read; for a
    /// damaged arena: what is wrong.
    pub reason: Option<String>,
    #[serde(skip)]
    pub inspection: Option<Box<Inspection>>,
}

fn empty_row(shm_name: String, path: PathBuf, named: bool, attached: Vec<u32>) -> Row {
    Row {
        shm_name,
        path,
        named,
        state: "unreadable",
        allocator: String::new(),
        scope_instance: String::new(),
        size: 0,
        used: 0,
        live_blocks: 0,
        job_token: String::new(),
        creator_pid: 0,
        creator_alive: false,
        attached_pids: attached,
        recorded_attachers: Vec::new(),
        owner_uid: 0,
        device: 0,
        inode: 0,
        reason: None,
        inspection: None,
    }
}

/// Fills `row` from an open, type-checked file.
fn fill(mut row: Row, file: &File, st: &nix::sys::stat::FileStat, max_entries: u64) -> Row {
    row.owner_uid = st.st_uid;
    row.size = st.st_size as u64;
    (row.device, row.inode) = (st.st_dev, st.st_ino);
    match inspect(file, &row.path, max_entries) {
        Ok(Inspected::Foreign { reason }) => {
            row.state = "foreign";
            row.reason = Some(reason);
        }
        Ok(Inspected::Arena(i)) => {
            let (allocator, instance) = nodeshm::topology::split_allocator_label(&i.info.label);
            row.allocator = allocator.to_string();
            row.scope_instance = instance.to_string();
            row.size = i.info.size;
            row.used = i.stats.used;
            row.live_blocks = i.stats.live_blocks;
            row.job_token = format!("{:016x}", i.info.job_token);
            row.creator_pid = i.info.creator_pid;
            row.creator_alive = alive(i.info.creator_pid, i.info.creator_start_time);
            row.recorded_attachers = i
                .info
                .attachers
                .iter()
                .filter(|&&(pid, start)| alive(pid, start))
                .map(|&(pid, _)| pid)
                .collect();
            row.state = if !row.attached_pids.is_empty() || !row.recorded_attachers.is_empty() {
                "live"
            } else if row.creator_alive {
                "idle"
            } else {
                "orphaned"
            };
            row.reason = i.damage.as_ref().map(|d| format!("arena damaged: {d}"));
            row.inspection = Some(i);
        }
        Err(e) => row.reason = Some(e.to_string()),
    }
    row
}

/// The row of a file we hold open (a path given to `stat`, outside the backing directory).
pub fn row_of_file(path: &Path, file: &File, st: &nix::sys::stat::FileStat, max: u64) -> Row {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    fill(
        empty_row(name, path.to_path_buf(), true, Vec::new()),
        file,
        st,
        max,
    )
}

/// Every arena this user can see in `dir`, named or unlinked-but-mapped, sorted by name.
/// Lists at most `max_entries` blocks of each.
pub fn scan(dir: &Dir, max_entries: u64) -> Vec<Row> {
    let maps = mappings(dir);
    let mut by_id: BTreeMap<FileId, Vec<&Mapping>> = BTreeMap::new();
    for m in &maps {
        by_id.entry(m.id).or_default().push(m);
    }
    let pids_of = |id: FileId| -> Vec<u32> {
        let mut pids: Vec<u32> = by_id
            .get(&id)
            .map(|v| v.iter().map(|m| m.pid).collect())
            .unwrap_or_default();
        pids.sort();
        pids
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut rows = Vec::new();
    let mut named_ids = BTreeSet::new();
    for name in dir.names() {
        let path = dir.path.join(&name);
        match open_for_reading(dir.fd.as_fd(), name.as_ref()) {
            Ok((file, st)) => {
                named_ids.insert((st.st_dev, st.st_ino));
                let row = empty_row(name, path, true, pids_of((st.st_dev, st.st_ino)));
                rows.push(fill(row, &file, &st, max_entries));
            }
            Err(what) => {
                // Another user's file we may not read is not ours to show.
                let owner = nix::sys::stat::fstatat(
                    dir.fd.as_fd(),
                    name.as_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map(|st| st.st_uid)
                .unwrap_or(u32::MAX);
                if what.starts_with("cannot be opened") && owner != me {
                    continue;
                }
                let mut row = empty_row(name, path, true, Vec::new());
                row.owner_uid = owner;
                if what.starts_with("cannot") {
                    row.reason = Some(what);
                } else {
                    row.state = "foreign";
                    row.reason = Some(format!("it is {what}, not a regular file"));
                }
                rows.push(row);
            }
        }
    }
    for (id, ms) in &by_id {
        if named_ids.contains(id) || !ms.iter().any(|m| m.deleted) {
            continue;
        }
        let path = dir.path.join(&ms[0].name);
        let row = empty_row(ms[0].name.clone(), path, false, pids_of(*id));
        let opened = ms
            .iter()
            .map(|m| open_through(m.pid, *id))
            .find(Result::is_ok)
            .unwrap_or_else(|| open_through(ms[0].pid, *id))
            .and_then(checked_regular);
        rows.push(match opened {
            Ok((file, st)) => fill(row, &file, &st, max_entries),
            Err(reason) => Row {
                reason: Some(reason),
                ..row
            },
        });
    }
    rows.sort_by(|a, b| a.shm_name.cmp(&b.shm_name).then(a.named.cmp(&b.named)));
    rows
}

/// Whether anything maps the file `id` right now (re-checked just before gc).
pub fn mapped_now(dir: &Dir, id: FileId) -> bool {
    mappings(dir).iter().any(|m| m.id == id)
}
