//! The one error type of nodeshm. Every message says what happened, the numbers involved, and
//! what to do about it.

use std::path::PathBuf;
use std::time::Duration;

/// Formats a byte count for messages: "64.0 MiB (67108864 bytes)".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {} ({bytes} bytes)", UNITS[unit])
    }
}

/// Stable numeric codes, shared with the C API (`NODESHM_E*` in `include/nodeshm.h`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument = 1,
    InvalidName = 2,
    SizeMismatch = 3,
    OutOfSpace = 4,
    NotHeld = 5,
    Timeout = 6,
    NotAnArena = 7,
    Incompatible = 8,
    NoSpaceInBacking = 9,
    Io = 10,
    AlreadyExists = 11,
    Binding = 12,
    Mpi = 13,
    Unsupported = 14,
    Corrupted = 15,
    Placement = 16,
    /// A bug in nodeshm (a panic caught at the C boundary).
    Internal = 17,
    /// The arena belongs to another user (or group) than the caller trusts.
    Untrusted = 18,
    /// MPI is not initialised, or already finalized: no collective call can run.
    MpiFinalized = 19,
}

impl ErrorCode {
    /// The code for a raw value, if it is one of ours.
    pub fn from_i32(value: i32) -> Option<Self> {
        use ErrorCode::*;
        [
            InvalidArgument,
            InvalidName,
            SizeMismatch,
            OutOfSpace,
            NotHeld,
            Timeout,
            NotAnArena,
            Incompatible,
            NoSpaceInBacking,
            Io,
            AlreadyExists,
            Binding,
            Mpi,
            Unsupported,
            Corrupted,
            Placement,
            Internal,
            Untrusted,
            MpiFinalized,
        ]
        .into_iter()
        .find(|c| *c as i32 == value)
    }
}

/// Everything that can go wrong in nodeshm.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error(
        "block {name:?} already exists with {existing} bytes, asked for {requested} bytes; \
         every process must ask for a name with the same size (deallocate it first to resize)"
    )]
    SizeMismatch {
        name: String,
        existing: u64,
        requested: u64,
    },

    #[error(
        "arena full: {} requested (with block metadata), largest free block {}, {} free of {}; \
         deallocate blocks or make the arena larger (Traits::size)",
        human_bytes(*requested), human_bytes(*largest_free), human_bytes(*free), human_bytes(*capacity)
    )]
    OutOfSpace {
        requested: u64,
        largest_free: u64,
        free: u64,
        capacity: u64,
    },

    #[error("{what} is not held by this process: {detail}")]
    NotHeld { what: String, detail: String },

    #[error("timed out after {:.1} s {what}; {hint}", waited.as_secs_f64())]
    Timeout {
        what: String,
        waited: Duration,
        hint: String,
    },

    #[error("{path} is not a nodeshm arena: {reason}")]
    NotAnArena { path: PathBuf, reason: String },

    #[error("{path} is an arena this version cannot use: {reason}")]
    Incompatible { path: PathBuf, reason: String },

    #[error(
        "cannot reserve {} in {dir}: {} free there; enlarge it (e.g. docker --shm-size, \
         mount -o remount,size=...) or lower the arena size",
        human_bytes(*requested), human_bytes(*available)
    )]
    NoSpaceInBacking {
        dir: PathBuf,
        requested: u64,
        available: u64,
    },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{0} already exists; choose another name, or remove the stale one (`nodeshm gc`)")]
    AlreadyExists(String),

    #[error("{0}")]
    Binding(String),

    #[error("MPI: {0}")]
    Mpi(String),

    #[error("unsupported: {0}")]
    Unsupported(String),

    #[error("arena metadata is corrupted: {0}")]
    Corrupted(String),

    #[error("memory placement: {0}")]
    Placement(String),

    #[error("internal error in nodeshm (please report it): {0}")]
    Internal(String),

    /// The shm object is owned by a user the caller did not name as trusted: whoever can write
    /// an arena can corrupt its process-shared mutex and crash every process attached to it.
    #[error(
        "{path} belongs to uid {owner} (group {group}), not to you (uid {uid}); refusing to attach \
         an arena another user can write. If that user is trusted, allow it explicitly \
         (Options::trust_uid, or Options::trust_group for a group)"
    )]
    Untrusted {
        path: PathBuf,
        owner: u32,
        group: u32,
        uid: u32,
    },

    /// An MPI call was asked for while MPI is not running.
    #[error("MPI is {0}: call nodeshm between MPI_Init and MPI_Finalize (release allocators and managers before MPI_Finalize)")]
    MpiFinalized(&'static str),

    /// An error that happened on one rank of a collective call and is returned on every rank.
    #[error("{message} (on rank {rank}{})", if *failed_ranks > 1 { format!(" and {} other rank(s)", failed_ranks - 1) } else { String::new() })]
    Collective {
        rank: i32,
        failed_ranks: i32,
        code: ErrorCode,
        message: String,
    },
}

impl Error {
    /// The stable code of this error (what the C API returns).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::InvalidName { .. } => ErrorCode::InvalidName,
            Error::SizeMismatch { .. } => ErrorCode::SizeMismatch,
            Error::OutOfSpace { .. } => ErrorCode::OutOfSpace,
            Error::NotHeld { .. } => ErrorCode::NotHeld,
            Error::Timeout { .. } => ErrorCode::Timeout,
            Error::NotAnArena { .. } => ErrorCode::NotAnArena,
            Error::Incompatible { .. } => ErrorCode::Incompatible,
            Error::NoSpaceInBacking { .. } => ErrorCode::NoSpaceInBacking,
            Error::Io { .. } => ErrorCode::Io,
            Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Error::Binding(_) => ErrorCode::Binding,
            Error::Mpi(_) => ErrorCode::Mpi,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::Corrupted(_) => ErrorCode::Corrupted,
            Error::Placement(_) => ErrorCode::Placement,
            Error::Internal(_) => ErrorCode::Internal,
            Error::Untrusted { .. } => ErrorCode::Untrusted,
            Error::MpiFinalized(_) => ErrorCode::MpiFinalized,
            Error::Collective { code, .. } => *code,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// nodeshm's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
