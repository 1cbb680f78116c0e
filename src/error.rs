//! The one error type of nodeshm. Every message says what happened, the numbers involved, and
//! what to do about it.

use std::path::PathBuf;
use std::time::Duration;

use crate::sys::human_bytes;

/// Stable numeric codes, shared with the C API (`NODESHM_E*` in `include/nodeshm.h`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// An argument is out of range or malformed (`NODESHM_EINVAL`).
    InvalidArgument = 1,
    /// A block, allocator or shm name is malformed (`NODESHM_ENAME`).
    InvalidName = 2,
    /// The block exists with another size (`NODESHM_ESIZE`).
    SizeMismatch = 3,
    /// The arena is full (`NODESHM_ENOSPC`).
    OutOfSpace = 4,
    /// Releasing something this process does not hold (`NODESHM_ENOTHELD`).
    NotHeld = 5,
    /// A wait ran past its timeout (`NODESHM_ETIMEDOUT`).
    Timeout = 6,
    /// A file that is not an arena (`NODESHM_ENOTARENA`).
    NotAnArena = 7,
    /// An arena of another layout version (`NODESHM_EVERSION`).
    Incompatible = 8,
    /// The backing directory cannot hold the arena (`NODESHM_ENOBACKING`).
    NoSpaceInBacking = 9,
    /// An operating-system call failed (`NODESHM_EIO`).
    Io = 10,
    /// The name is taken (`NODESHM_EEXIST`).
    AlreadyExists = 11,
    /// A rank's CPU binding does not fit the scope (`NODESHM_EBINDING`).
    Binding = 12,
    /// An MPI call failed (`NODESHM_EMPI`).
    Mpi = 13,
    /// Not available in this build or on this system (`NODESHM_EUNSUPPORTED`).
    Unsupported = 14,
    /// Arena metadata is damaged (`NODESHM_ECORRUPT`).
    Corrupted = 15,
    /// The memory placement asked for cannot be honoured (`NODESHM_EPLACEMENT`).
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
    /// An argument is out of range or malformed; the text says which and what is allowed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A name is malformed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name (cut to 64 characters).
        name: String,
        /// What names must look like.
        reason: String,
    },

    /// The block exists with another size.
    #[error(
        "block {name:?} already exists with {existing} bytes, asked for {requested} bytes; \
         every process must ask for a name with the same size (deallocate it first to resize)"
    )]
    SizeMismatch {
        /// The block's name.
        name: String,
        /// Its size in the arena.
        existing: u64,
        /// The size asked for.
        requested: u64,
    },

    /// The arena has no free block large enough.
    #[error(
        "arena full: {} requested (with block metadata), largest free block {}, {} free of {}; \
         deallocate blocks or make the arena larger (Traits::size)",
        human_bytes(*requested), human_bytes(*largest_free), human_bytes(*free), human_bytes(*capacity)
    )]
    OutOfSpace {
        /// Bytes needed, with block metadata.
        requested: u64,
        /// The largest block that could still be allocated.
        largest_free: u64,
        /// All free bytes.
        free: u64,
        /// The heap's capacity.
        capacity: u64,
    },

    /// Releasing something this process does not hold; nothing was changed.
    #[error("{what} is not held by this process: {detail}")]
    NotHeld {
        /// What was to be released.
        what: String,
        /// Why it is not held, and what to do.
        detail: String,
    },

    /// A wait ran past its timeout.
    #[error("timed out after {:.1} s {what}; {hint}", waited.as_secs_f64())]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// What to check (who holds a lock, ...).
        hint: String,
    },

    /// A file that is not an arena (or a damaged one).
    #[error("{path} is not a nodeshm arena: {reason}")]
    NotAnArena {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },

    /// An arena of another layout version.
    #[error("{path} is an arena this version cannot use: {reason}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// Which version, and what to do.
        reason: String,
    },

    /// The backing directory (or the free huge pages) cannot hold the arena.
    #[error(
        "cannot reserve {} in {dir}: {} free there; enlarge it (e.g. docker --shm-size, \
         mount -o remount,size=...) or lower the arena size",
        human_bytes(*requested), human_bytes(*available)
    )]
    NoSpaceInBacking {
        /// The backing directory.
        dir: PathBuf,
        /// The arena's size.
        requested: u64,
        /// Free bytes there.
        available: u64,
    },

    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// The name is taken.
    #[error("{0} already exists; choose another name, or remove the stale one (`nodeshm gc`)")]
    AlreadyExists(String),

    /// A rank's CPU binding does not fit the scope (or the topology could not be read).
    #[error("{0}")]
    Binding(String),

    /// An MPI call failed.
    #[error("MPI: {0}")]
    Mpi(String),

    /// Not available in this build or on this system.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// Arena metadata is damaged; the text says what and where.
    #[error("arena metadata is corrupted: {0}")]
    Corrupted(String),

    /// The memory placement asked for cannot be honoured.
    #[error("memory placement: {0}")]
    Placement(String),

    /// A bug in nodeshm.
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
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its group.
        group: u32,
        /// The caller's effective uid.
        uid: u32,
    },

    /// An MPI call was asked for while MPI is not running.
    #[error("MPI is {0}: call nodeshm between MPI_Init and MPI_Finalize (release allocators and managers before MPI_Finalize)")]
    MpiFinalized(String),

    /// An error that happened on one rank of a collective call and is returned on every rank:
    /// `source` is that error with its variant and fields (the original on the rank where it
    /// happened, a copy sent from there on the others), so every rank can match on it, e.g.
    /// `Err(Error::Collective { source, .. }) if matches!(*source, Error::NoSpaceInBacking { .. })`
    /// or simply `e.root()`.
    #[error("{source} (on rank {rank}{})", if *failed_ranks > 1 { format!(" and {} other rank(s)", failed_ranks - 1) } else { String::new() })]
    Collective {
        /// The lowest rank (of the communicator of the call) that failed.
        rank: i32,
        /// How many ranks failed.
        failed_ranks: i32,
        /// What went wrong there.
        source: Box<Error>,
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
            Error::Collective { source, .. } => source.code(),
        }
    }

    /// The error itself, beneath any [`Error::Collective`] wrapping.
    pub fn root(&self) -> &Error {
        match self {
            Error::Collective { source, .. } => source.root(),
            e => e,
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

/// An error as numbers and strings, to send it to other ranks (the only place that knows the
/// encoding: `encode` and `decode` below mirror each other variant by variant).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "mpi"), allow(dead_code))] // only MPI sends errors
pub(crate) struct Wire {
    pub nums: Vec<u64>,
    pub strs: Vec<String>,
}

/// `nums[0]` of a wrapped collective error.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
const WIRE_COLLECTIVE: u64 = u64::MAX;

#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
impl Wire {
    pub(crate) fn of(e: &Error) -> Wire {
        let mut w = Wire::default();
        w.encode(e);
        w
    }

    fn encode(&mut self, e: &Error) {
        let (nums, strs): (&[u64], Vec<String>) = match e {
            Error::Collective {
                rank,
                failed_ranks,
                source,
            } => {
                self.nums
                    .extend([WIRE_COLLECTIVE, *rank as u64, *failed_ranks as u64]);
                return self.encode(source);
            }
            Error::InvalidName { name, reason } => (&[], vec![name.clone(), reason.clone()]),
            Error::SizeMismatch {
                name,
                existing,
                requested,
            } => (&[*existing, *requested], vec![name.clone()]),
            Error::OutOfSpace {
                requested,
                largest_free,
                free,
                capacity,
            } => (&[*requested, *largest_free, *free, *capacity], vec![]),
            Error::NotHeld { what, detail } => (&[], vec![what.clone(), detail.clone()]),
            Error::Timeout { what, waited, hint } => (
                &[waited.as_nanos().min(u64::MAX as u128) as u64],
                vec![what.clone(), hint.clone()],
            ),
            Error::NotAnArena { path, reason } | Error::Incompatible { path, reason } => {
                (&[], vec![path.display().to_string(), reason.clone()])
            }
            Error::NoSpaceInBacking {
                dir,
                requested,
                available,
            } => (&[*requested, *available], vec![dir.display().to_string()]),
            Error::Io { what, source } => (
                &[source.raw_os_error().map_or(u64::MAX, |c| c as u64)],
                vec![what.clone(), source.to_string()],
            ),
            Error::Untrusted {
                path,
                owner,
                group,
                uid,
            } => (
                &[*owner as u64, *group as u64, *uid as u64],
                vec![path.display().to_string()],
            ),
            Error::InvalidArgument(s)
            | Error::AlreadyExists(s)
            | Error::Binding(s)
            | Error::Mpi(s)
            | Error::Unsupported(s)
            | Error::Corrupted(s)
            | Error::Placement(s)
            | Error::Internal(s)
            | Error::MpiFinalized(s) => (&[], vec![s.clone()]),
        };
        // Fixed arity per variant: a count makes decoding independent of the variant list.
        self.nums.push(e.code() as u64);
        self.nums.push(nums.len() as u64);
        self.nums.extend_from_slice(nums);
        self.nums.push(strs.len() as u64);
        self.strs.extend(strs);
    }

    /// Rebuilds the error. Never panics: missing parts read as 0 and "".
    pub(crate) fn decode(&self) -> Error {
        let mut nums = self.nums.iter().copied();
        let mut strs = self.strs.iter().cloned();
        Self::decode_from(&mut nums, &mut strs, 0)
    }

    fn decode_from(
        nums: &mut impl Iterator<Item = u64>,
        strs: &mut impl Iterator<Item = String>,
        depth: u32,
    ) -> Error {
        let mut first = nums.next().unwrap_or(0);
        if first == WIRE_COLLECTIVE && depth < 8 {
            let rank = nums.next().unwrap_or(0) as i32;
            let failed_ranks = nums.next().unwrap_or(0) as i32;
            let source = Self::decode_from(nums, strs, depth + 1);
            return Error::Collective {
                rank,
                failed_ranks,
                source: Box::new(source),
            };
        }
        if first == WIRE_COLLECTIVE {
            first = 0;
        }
        let count = nums.next().unwrap_or(0).min(8);
        let n: Vec<u64> = (0..count).map(|_| nums.next().unwrap_or(0)).collect();
        let count = nums.next().unwrap_or(0).min(8);
        let t: Vec<String> = (0..count)
            .map(|_| strs.next().unwrap_or_default())
            .collect();
        let num = |i: usize| n.get(i).copied().unwrap_or(0);
        let text = |i: usize| t.get(i).cloned().unwrap_or_default();
        use ErrorCode as C;
        match ErrorCode::from_i32(first as i32).unwrap_or(C::Internal) {
            C::InvalidArgument => Error::InvalidArgument(text(0)),
            C::InvalidName => Error::InvalidName {
                name: text(0),
                reason: text(1),
            },
            C::SizeMismatch => Error::SizeMismatch {
                name: text(0),
                existing: num(0),
                requested: num(1),
            },
            C::OutOfSpace => Error::OutOfSpace {
                requested: num(0),
                largest_free: num(1),
                free: num(2),
                capacity: num(3),
            },
            C::NotHeld => Error::NotHeld {
                what: text(0),
                detail: text(1),
            },
            C::Timeout => Error::Timeout {
                what: text(0),
                waited: Duration::from_nanos(num(0)),
                hint: text(1),
            },
            C::NotAnArena => Error::NotAnArena {
                path: text(0).into(),
                reason: text(1),
            },
            C::Incompatible => Error::Incompatible {
                path: text(0).into(),
                reason: text(1),
            },
            C::NoSpaceInBacking => Error::NoSpaceInBacking {
                dir: text(0).into(),
                requested: num(0),
                available: num(1),
            },
            C::Io => Error::Io {
                what: text(0),
                source: match i32::try_from(num(0)) {
                    Ok(code) => std::io::Error::from_raw_os_error(code),
                    Err(_) => std::io::Error::other(text(1)),
                },
            },
            C::AlreadyExists => Error::AlreadyExists(text(0)),
            C::Binding => Error::Binding(text(0)),
            C::Mpi => Error::Mpi(text(0)),
            C::Unsupported => Error::Unsupported(text(0)),
            C::Corrupted => Error::Corrupted(text(0)),
            C::Placement => Error::Placement(text(0)),
            C::Internal => Error::Internal(text(0)),
            C::Untrusted => Error::Untrusted {
                path: text(0).into(),
                owner: num(0) as u32,
                group: num(1) as u32,
                uid: num(2) as u32,
            },
            C::MpiFinalized => Error::MpiFinalized(text(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant survives the trip to another rank with its fields (compared by message,
    /// which shows every field, and by code).
    #[test]
    fn errors_cross_the_wire_with_their_fields() {
        let all = [
            Error::InvalidArgument("x".into()),
            Error::InvalidName {
                name: "a b".into(),
                reason: "r".into(),
            },
            Error::SizeMismatch {
                name: "t".into(),
                existing: 64,
                requested: 128,
            },
            Error::OutOfSpace {
                requested: 1,
                largest_free: 2,
                free: 3,
                capacity: 4,
            },
            Error::NotHeld {
                what: "w".into(),
                detail: "d".into(),
            },
            Error::Timeout {
                what: "w".into(),
                waited: Duration::from_millis(1500),
                hint: "h".into(),
            },
            Error::NotAnArena {
                path: "/dev/shm/x".into(),
                reason: "r".into(),
            },
            Error::Incompatible {
                path: "/p".into(),
                reason: "r".into(),
            },
            Error::NoSpaceInBacking {
                dir: "/dev/shm".into(),
                requested: 1 << 30,
                available: 5,
            },
            Error::io("opening", std::io::Error::from_raw_os_error(13)),
            Error::AlreadyExists("a".into()),
            Error::Binding("b".into()),
            Error::Mpi("m".into()),
            Error::Unsupported("u".into()),
            Error::Corrupted("c".into()),
            Error::Placement("p".into()),
            Error::Internal("i".into()),
            Error::Untrusted {
                path: "/p".into(),
                owner: 1,
                group: 2,
                uid: 3,
            },
            Error::MpiFinalized("finalized".into()),
            Error::Collective {
                rank: 3,
                failed_ranks: 2,
                source: Box::new(Error::SizeMismatch {
                    name: "n".into(),
                    existing: 1,
                    requested: 2,
                }),
            },
        ];
        for e in &all {
            let back = Wire::of(e).decode();
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(back.code(), e.code());
        }
        let nested = Wire::of(&all[2]).decode();
        assert!(matches!(
            nested,
            Error::SizeMismatch {
                existing: 64,
                requested: 128,
                ..
            }
        ));
        assert_eq!(
            Wire {
                nums: vec![99, 5],
                strs: vec![]
            }
            .decode()
            .code(),
            ErrorCode::Internal
        );
        assert_eq!(Wire::default().decode().code(), ErrorCode::Internal);
    }
}
