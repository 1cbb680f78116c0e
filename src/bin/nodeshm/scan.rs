//! Finding arenas on this node: named ones in the backing directory, and unlinked ones still
//! mapped by live processes (from /proc/<pid>/maps), with who maps them and their state.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nodeshm::arena::{inspect, process_start_time, Inspected, Inspection};
use serde::Serialize;

/// One mapping of a nodeshm file by a live process.
#[derive(Debug, Clone)]
struct Mapping {
    pid: u32,
    inode: u64,
    path: PathBuf,
    deleted: bool,
}

/// Every process's mappings of files in `dir` whose name starts with "nodeshm".
fn mappings(dir: &Path) -> Vec<Mapping> {
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
            let (Some(_), Some(_), Some(_), Some(_), Some(inode), Some(path)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let path = path.trim_start();
            let (path, deleted) = match path.strip_suffix(" (deleted)") {
                Some(p) => (p, true),
                None => (path, false),
            };
            let path = PathBuf::from(path);
            let ours = path.parent() == Some(dir)
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("nodeshm"));
            let inode: u64 = inode.parse().unwrap_or(0);
            if ours && seen.insert(inode) {
                out.push(Mapping {
                    pid,
                    inode,
                    path,
                    deleted,
                });
            }
        }
    }
    out
}

/// Opens an unlinked arena through a process that maps it: an fd it keeps (nodeshm keeps one),
/// else its map_files entry (needs CAP_SYS_ADMIN).
fn open_through(pid: u32, inode: u64) -> Result<File, String> {
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(f) = File::open(fd.path()) {
                if f.metadata().is_ok_and(|m| m.ino() == inode) {
                    return Ok(f);
                }
            }
        }
    }
    if let Ok(maps) = std::fs::read_dir(format!("/proc/{pid}/map_files")) {
        for m in maps.flatten() {
            if std::fs::metadata(m.path()).is_ok_and(|md| md.ino() == inode) {
                return File::open(m.path()).map_err(|e| {
                    format!("process {pid} maps it but /proc/{pid}/map_files cannot be opened: {e}")
                });
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
    pub owner_uid: u32,
    /// For foreign or unreadable files: what they are / why they could not be read.
    pub reason: Option<String>,
    #[serde(skip)]
    pub inspection: Option<Box<Inspection>>,
}

/// True if `pid` runs and started at `start_time` (0: unknown, pid existence only).
pub fn alive(pid: u32, start_time: u64) -> bool {
    pid != 0
        && Path::new(&format!("/proc/{pid}")).exists()
        && (start_time == 0 || process_start_time(pid) == start_time)
}

fn row(path: PathBuf, named: bool, file: Result<File, String>, attached: Vec<u32>) -> Row {
    let shm_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut row = Row {
        shm_name,
        path: path.clone(),
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
        owner_uid: 0,
        reason: None,
        inspection: None,
    };
    let file = match file {
        Ok(f) => f,
        Err(reason) => {
            row.reason = Some(reason);
            return row;
        }
    };
    if let Ok(meta) = file.metadata() {
        row.owner_uid = meta.uid();
        row.size = meta.len();
    }
    match inspect(&file, &path) {
        Ok(Inspected::Foreign { reason }) => {
            row.state = "foreign";
            row.reason = Some(reason);
        }
        Ok(Inspected::Arena(i)) => {
            let (allocator, instance) = i.info.label.split_once(' ').unwrap_or((&i.info.label, ""));
            row.allocator = allocator.to_string();
            row.scope_instance = instance.to_string();
            row.size = i.info.size;
            row.used = i.stats.used;
            row.live_blocks = i.stats.live_blocks;
            row.job_token = format!("{:016x}", i.info.job_token);
            row.creator_pid = i.info.creator_pid;
            row.creator_alive = alive(i.info.creator_pid, i.info.creator_start_time);
            row.state = if !row.attached_pids.is_empty() {
                "live"
            } else if row.creator_alive {
                "idle"
            } else {
                "orphaned"
            };
            row.inspection = Some(i);
        }
        Err(e) => row.reason = Some(e.to_string()),
    }
    row
}

/// Every arena this user can see in `dir`, named or unlinked-but-mapped, sorted by name.
pub fn scan(dir: &Path) -> Vec<Row> {
    let maps = mappings(dir);
    let mut by_inode: BTreeMap<u64, Vec<&Mapping>> = BTreeMap::new();
    for m in &maps {
        by_inode.entry(m.inode).or_default().push(m);
    }
    let pids_of = |inode: u64| -> Vec<u32> {
        let mut pids: Vec<u32> = by_inode
            .get(&inode)
            .map(|v| v.iter().map(|m| m.pid).collect())
            .unwrap_or_default();
        pids.sort();
        pids
    };
    let mut rows = Vec::new();
    let mut named_inodes = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("nodeshm") || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            named_inodes.insert(meta.ino());
            let file = File::open(e.path()).map_err(|err| format!("cannot open: {err}"));
            if file.is_err() && meta.uid() != nix::unistd::geteuid().as_raw() {
                continue; // another user's arena that we may not read: not ours to show
            }
            rows.push(row(e.path(), true, file, pids_of(meta.ino())));
        }
    }
    for (inode, ms) in &by_inode {
        if named_inodes.contains(inode) || !ms.iter().any(|m| m.deleted) {
            continue;
        }
        let file = ms
            .iter()
            .map(|m| open_through(m.pid, *inode))
            .find(Result::is_ok)
            .unwrap_or_else(|| open_through(ms[0].pid, *inode));
        rows.push(row(ms[0].path.clone(), false, file, pids_of(*inode)));
    }
    rows.sort_by(|a, b| a.shm_name.cmp(&b.shm_name).then(a.named.cmp(&b.named)));
    rows
}

/// Whether anything maps the file with this inode right now (re-checked just before gc).
pub fn mapped_now(dir: &Path, inode: u64) -> bool {
    mappings(dir).iter().any(|m| m.inode == inode)
}
