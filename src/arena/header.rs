//! The arena header as readers see it: the one check that a file is a ready arena of our layout
//! (used by attach and by inspection alike), and the figures read from it. Everything here
//! reads through [`Mem`] or `pread`, so it works on a live mapping and on a file a tool must not
//! map.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::heap;
use super::layout::{self as l, Geometry};
use super::options::Unlink;
use super::region::Mem;
use super::{ArenaInfo, Stats};
use crate::error::Result;

/// What the first bytes of a file say.
#[derive(Debug)]
pub(crate) enum HeaderState {
    /// A ready arena of this layout, with its checked geometry.
    Ready(Geometry),
    /// Possibly an arena still being created (too short, magic or ready flag not written yet).
    NotReady(&'static str),
    /// Another layout version.
    OtherVersion(u32),
    /// Not an arena (or a damaged one); the reason says what is wrong.
    Bad(String),
}

/// Reads the header of `file` (of `len` bytes) with `pread` and classifies it. Never maps the
/// file, so holes and concurrent truncation cost nothing and raise no signal.
pub(crate) fn check(file: &File, len: u64) -> HeaderState {
    if len < l::HEADER_SIZE {
        return HeaderState::NotReady("is still being created");
    }
    let word = |off: u64| {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, off).ok()?;
        Some(u64::from_ne_bytes(b))
    };
    let mut head = [0u8; 24];
    if let Err(e) = file.read_exact_at(&mut head, 0) {
        return HeaderState::Bad(format!("unreadable: {e}"));
    }
    let magic = &head[..8];
    if magic != l::MAGIC {
        if magic.iter().all(|&b| b == 0) {
            return HeaderState::NotReady("never finished initialising");
        }
        return HeaderState::Bad(format!(
            "it starts with {magic:02x?}, not the nodeshm magic"
        ));
    }
    let version = u32::from_ne_bytes([head[8], head[9], head[10], head[11]]);
    if version != l::LAYOUT_VERSION {
        return HeaderState::OtherVersion(version);
    }
    let size = u64::from_ne_bytes([
        head[16], head[17], head[18], head[19], head[20], head[21], head[22], head[23],
    ]);
    if size != len {
        return HeaderState::Bad(format!(
            "truncated or damaged: the header says {size} bytes, the file has {len} bytes"
        ));
    }
    let mut state = [0u8; 4];
    if file.read_exact_at(&mut state, l::INIT_STATE).is_err()
        || u32::from_ne_bytes(state) != l::INIT_READY
    {
        return HeaderState::NotReady("never finished initialising");
    }
    match Geometry::read(size, word) {
        Ok(g) => HeaderState::Ready(g),
        Err(reason) => HeaderState::Bad(reason),
    }
}

/// A NUL-padded UTF-8 text field of the header.
pub(crate) fn read_str<M: Mem + ?Sized>(r: &M, off: u64) -> String {
    let mut buf = [0u8; l::LABEL_LEN];
    if r.read_bytes(off, &mut buf).is_err() {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The text field bytes for `s`: cut at a character boundary to fit, NUL-padded.
pub(crate) fn encode_str(s: &str) -> [u8; l::LABEL_LEN] {
    let mut buf = [0u8; l::LABEL_LEN];
    let mut n = s.len().min(l::LABEL_LEN - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    buf[..n].copy_from_slice(&s.as_bytes()[..n]);
    buf
}

/// Usage figures; `Corrupted` if the free lists are damaged.
pub(crate) fn stats<M: Mem + ?Sized>(r: &M) -> Result<Stats> {
    let (free, largest_free) = heap::free_space(r)?;
    // Parked blocks are the heap's "used" but the user's free (see recycle.rs).
    let parked = r.load(l::PARKED_BYTES)?;
    Ok(Stats {
        capacity: heap::capacity(r),
        used: r.load(l::USED)?.saturating_sub(parked),
        free: free.saturating_add(parked),
        largest_free,
        live_blocks: r.load(l::LIVE_BLOCKS)?,
        requested: r.load(l::REQUESTED)?,
        high_water: r.load(l::HIGH_WATER)?,
        recoveries: r.load(l::RECOVERIES)?,
    })
}

/// What the header says (fields that cannot be read read as 0).
pub(crate) fn info<M: Mem + ?Sized>(r: &M) -> ArenaInfo {
    let w = |off| r.load(off).unwrap_or(0);
    let w32 = |off| r.load32(off).unwrap_or(0);
    ArenaInfo {
        layout_version: w32(l::VERSION_OFF),
        size: w(l::SIZE),
        creator_pid: w32(l::CREATOR_PID),
        creator_start_time: w(l::CREATOR_START),
        job_token: w(l::JOB_TOKEN),
        created_unix_secs: w(l::CREATED_SECS),
        unlink: Unlink::decode(w32(l::UNLINK_POLICY), w32(l::EXPECTED_PEERS)),
        attach_count: w32(l::ATTACH_COUNT),
        attachers: (0..l::ATTACHER_SLOTS as u64)
            .map(l::attacher_record)
            .filter_map(|slot| {
                let pid = w(slot);
                (pid != 0).then(|| (pid as u32, w(slot + l::ATTACHER_STARTED)))
            })
            .collect(),
        unlinked: w32(l::UNLINKED) != 0,
        label: read_str(r, l::LABEL),
        placement: read_str(r, l::PLACEMENT),
        bucket_count: r.geometry().groups() * l::GROUP_HEADS,
        chains_in_use: super::directory::extent(r).map_or(0, |e| e.groups() * l::GROUP_HEADS),
    }
}
