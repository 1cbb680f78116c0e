//! Read-only inspection of an arena file, for tools: never takes the lock, never writes, and
//! never trusts what it reads (every offset is bounds-checked, every walk is bounded), so a
//! damaged or foreign file gives a report, not a crash. Figures read while processes are
//! changing the arena may be slightly out of step with each other.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::directory::{EntryInfo, MAX_NAME_LEN};
use super::layout::{self as l, ENTRY_SIZE};
use super::region::Region;
use super::{info_of, ArenaInfo, Stats};
use crate::error::{Error, Result};

/// What an inspection found.
#[derive(Debug, Clone)]
pub enum Inspected {
    /// An arena of this layout.
    Arena(Box<Inspection>),
    /// Not something this version can read; `reason` says what it is.
    Foreign { reason: String },
}

/// An arena's header, figures and blocks, as read.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub path: PathBuf,
    pub info: ArenaInfo,
    pub stats: Stats,
    pub entries: Vec<EntryInfo>,
    /// Anything odd met while walking (a concurrent update, or damage).
    pub warnings: Vec<String>,
}

/// Longest chain walk before giving up (guards against loops in damaged metadata).
const MAX_STEPS: u64 = 1 << 24;

/// Classifies the first bytes of a file: `Err(reason)` if it is not a readable arena.
fn check_header(file: &File, len: u64) -> std::result::Result<(), String> {
    if len < l::HEADER_SIZE {
        return Err(format!(
            "{len} bytes, smaller than an arena header ({} bytes)",
            l::HEADER_SIZE
        ));
    }
    let mut head = [0u8; 24];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| format!("unreadable: {e}"))?;
    if head[..8] != l::MAGIC {
        return Err(format!(
            "does not start with the nodeshm magic (starts with {:02x?})",
            &head[..8]
        ));
    }
    let version = u32::from_ne_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != l::LAYOUT_VERSION {
        return Err(format!(
            "nodeshm layout version {version}; this tool reads version {}",
            l::LAYOUT_VERSION
        ));
    }
    let size = u64::from_ne_bytes(head[16..24].try_into().expect("8 bytes"));
    if size != len {
        return Err(format!(
            "truncated: header says {size} bytes, the file has {len}"
        ));
    }
    l::check_geometry(size, |off| {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, off).ok()?;
        Some(u64::from_ne_bytes(b))
    })
}

/// Inspects the arena open as `file` (a named shm object, or an fd of a process that maps an
/// unlinked one). `path` is only used in the report.
pub fn inspect(file: &File, path: &Path) -> Result<Inspected> {
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    if let Err(reason) = check_header(file, len) {
        return Ok(Inspected::Foreign { reason });
    }
    let map = memmap2::MmapOptions::new()
        .map_raw_read_only(file)
        .map_err(|e| Error::io(format!("mapping {} read-only", path.display()), e))?;
    let base = std::ptr::NonNull::new(map.as_mut_ptr()).expect("mmap never returns null");
    // SAFETY: the mapping is live for this function (`map` outlives `r`), page-aligned and
    // `map.len()` bytes long; only loads are made through this Region (it is read-only).
    let r = unsafe { Region::new(base, map.len() as u64) };
    let info = info_of(&r);
    let mut warnings = Vec::new();
    let stats = stats(&r, &mut warnings);
    let entries = entries(&r, &mut warnings);
    drop(map);
    Ok(Inspected::Arena(Box::new(Inspection {
        path: path.to_path_buf(),
        info,
        stats,
        entries,
        warnings,
    })))
}

fn stats(r: &Region, warnings: &mut Vec<String>) -> Stats {
    let used = r.load(l::USED);
    let heap_offset = r.load(l::HEAP_OFFSET);
    let heap_end = r.load(l::HEAP_END);
    let capacity = heap_end.saturating_sub(heap_offset).saturating_sub(16);
    // The largest free block: walk the highest populated class.
    let mut largest = 0;
    let flmap = r.load(l::FL_BITMAP);
    if flmap != 0 {
        let fl = (63 - flmap.leading_zeros()) as u64;
        let slmap = r.get(l::SL_BITMAP + fl * 8).unwrap_or(0);
        if slmap != 0 {
            let sl = (63 - slmap.leading_zeros()) as u64;
            let mut b = r
                .get(l::HEADS + (fl * l::SL_COUNT as u64 + sl) * 8)
                .unwrap_or(0);
            let mut steps = 0;
            while b != 0 && steps < MAX_STEPS {
                match (r.get(b + 8), r.get(b + 16)) {
                    (Some(size), Some(next)) => {
                        largest = largest.max(size & !3);
                        b = next;
                    }
                    _ => {
                        warnings.push(format!("free list leads outside the arena (offset {b})"));
                        break;
                    }
                }
                steps += 1;
            }
        }
    }
    Stats {
        capacity,
        used,
        free: capacity.saturating_sub(used),
        largest_free: largest,
        live_blocks: r.load(l::LIVE_BLOCKS),
        requested: r.load(l::REQUESTED),
        high_water: r.load(l::HIGH_WATER),
        recoveries: r.load(l::RECOVERIES),
    }
}

fn entries(r: &Region, warnings: &mut Vec<String>) -> Vec<EntryInfo> {
    let mut out = Vec::new();
    let buckets = r.load(l::BUCKETS);
    let count = r.load(l::BUCKET_COUNT).min(r.len() / 8);
    let mut steps = 0u64;
    for i in 0..count {
        let mut e = r.get(buckets + i * 8).unwrap_or(0);
        while e != 0 {
            steps += 1;
            if steps > MAX_STEPS {
                warnings.push("directory chains do not end (damaged?)".into());
                return out;
            }
            let fields = (
                r.get(e + l::E_NEXT),
                r.get(e + l::E_DATA),
                r.get(e + l::E_SIZE),
                r.get(e + l::E_REFCOUNT),
                r.get(e + l::E_NAME_LEN),
            );
            let (Some(next), Some(offset), Some(size), Some(refcount), Some(name_len)) = fields
            else {
                warnings.push(format!("bucket {i} leads outside the arena (offset {e})"));
                break;
            };
            let name_len = (name_len as usize).min(MAX_NAME_LEN);
            let mut name = vec![0u8; name_len];
            if e + ENTRY_SIZE + name_len as u64 <= r.len() {
                r.read_bytes(e + ENTRY_SIZE, &mut name);
            }
            out.push(EntryInfo {
                name: String::from_utf8_lossy(&name).into_owned(),
                offset,
                size,
                refcount,
            });
            e = next;
        }
    }
    out
}
