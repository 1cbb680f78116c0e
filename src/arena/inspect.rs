//! Read-only inspection of an arena file, for tools: never maps the file (it reads with `pread`,
//! so a file another user truncates raises no SIGBUS and reading holes allocates nothing),
//! never takes the lock, never writes, and walks the layout with the library's own bounded,
//! checked walkers, so a damaged or foreign file gives a bounded report, not a crash or a hang.
//! Figures read while processes are changing the arena may be slightly out of step.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::directory::{self, EntryInfo};
use super::header::{self, HeaderState};
use super::layout::Geometry;
use super::region::{outside, Mem};
use super::{ArenaInfo, Stats};
use crate::error::{Error, Result};

/// What an inspection found.
#[derive(Debug, Clone)]
pub enum Inspected {
    /// An arena of this layout.
    Arena(Box<Inspection>),
    /// Not something this version can read; `reason` says what it is.
    Foreign {
        /// What the file is.
        reason: String,
    },
}

/// An arena's header, figures and blocks, as read.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Where it was read from.
    pub path: PathBuf,
    /// What its header says.
    pub info: ArenaInfo,
    /// Zero when the free lists could not be read (see `damage`).
    pub stats: Stats,
    /// The blocks found, at most the `max_entries` asked for.
    pub entries: Vec<EntryInfo>,
    /// True when there were more blocks than `max_entries`.
    pub truncated: bool,
    /// What is wrong, when the metadata is damaged (or changed too much while being read).
    pub damage: Option<String>,
}

/// Reads a file with `pread`, a chunk at a time, keeping a bounded cache of chunks.
struct FileMem<'f> {
    file: &'f File,
    len: u64,
    geo: Geometry,
    chunks: RefCell<HashMap<u64, Vec<u8>>>,
}

const CHUNK: u64 = 64 << 10;
/// 16 MiB of cache at most; a larger working set is simply read again.
const MAX_CHUNKS: usize = 256;

impl FileMem<'_> {
    fn chunk(&self, index: u64, out: &mut dyn FnMut(&[u8])) -> Result<()> {
        let mut chunks = self.chunks.borrow_mut();
        if !chunks.contains_key(&index) {
            if chunks.len() >= MAX_CHUNKS {
                chunks.clear();
            }
            let start = index * CHUNK;
            let n = CHUNK.min(self.len - start) as usize;
            let mut buf = vec![0u8; n];
            self.file.read_exact_at(&mut buf, start).map_err(|e| {
                let now = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                Error::Corrupted(format!(
                    "the file changed while being read ({e}; it has {now} bytes now, {} before)",
                    self.len
                ))
            })?;
            chunks.insert(index, buf);
        }
        out(&chunks[&index]);
        Ok(())
    }
}

impl Mem for FileMem<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    fn read_bytes(&self, off: u64, out: &mut [u8]) -> Result<()> {
        let n = out.len() as u64;
        if off.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(outside(off, n, self.len));
        }
        let mut done = 0u64;
        while done < n {
            let at = off + done;
            let (index, within) = (at / CHUNK, (at % CHUNK) as usize);
            let take = (n - done).min(CHUNK - within as u64) as usize;
            let dst = &mut out[done as usize..done as usize + take];
            self.chunk(index, &mut |c| {
                dst.copy_from_slice(&c[within..within + take])
            })?;
            done += take as u64;
        }
        Ok(())
    }
}

/// Inspects the arena open as `file` (a named shm object, or an fd of a process that maps an
/// unlinked one), listing at most `max_entries` blocks. `path` is only used in the report.
/// The caller opened `file` (non-blocking, no symlinks) and checked it is a regular file.
pub fn inspect(file: &File, path: &Path, max_entries: u64) -> Result<Inspected> {
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    let geo = match header::check(file, len) {
        HeaderState::Ready(geo) => geo,
        HeaderState::NotReady(_) if len < super::HEADER_SIZE => {
            return Ok(Inspected::Foreign {
                reason: format!(
                    "{len} bytes, smaller than an arena header ({} bytes)",
                    super::HEADER_SIZE
                ),
            })
        }
        HeaderState::NotReady(state) => {
            return Ok(Inspected::Foreign {
                reason: format!("{len} bytes that are not a ready arena: it {state}"),
            })
        }
        HeaderState::OtherVersion(v) => {
            return Ok(Inspected::Foreign {
                reason: format!(
                    "nodeshm layout version {v}; this tool reads version {}",
                    super::LAYOUT_VERSION
                ),
            })
        }
        HeaderState::Bad(reason) => return Ok(Inspected::Foreign { reason }),
    };
    let mem = FileMem {
        file,
        len,
        geo,
        chunks: RefCell::new(HashMap::new()),
    };
    let info = header::info(&mem);
    let mut damage = None;
    let stats = header::stats(&mem).unwrap_or_else(|e| {
        damage = Some(e.to_string());
        Stats::default()
    });
    let (entries, truncated) = match directory::entries_partial(&mem, max_entries) {
        (entries, truncated, None) => (entries, truncated),
        (entries, truncated, Some(e)) => {
            damage.get_or_insert(e.to_string());
            (entries, truncated)
        }
    };
    Ok(Inspected::Arena(Box::new(Inspection {
        path: path.to_path_buf(),
        info,
        stats,
        entries,
        truncated,
        damage,
    })))
}
