//! How an arena is created and attached.

use std::path::PathBuf;
use std::time::Duration;

/// When the arena's name disappears from the backing directory. Mappings stay valid either way;
/// the memory is freed by the kernel when the name is gone and the last mapping is unmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum Unlink {
    /// As soon as `peers` processes besides the creator have attached (the last of them unlinks;
    /// with 0 the creator unlinks right after creating). From then on a crash of any process
    /// leaks nothing. If the creator's handle is dropped first, the creator unlinks.
    AfterAttach {
        /// Processes besides the creator that will attach.
        peers: u32,
    },
    /// When the last attached handle is dropped (a process killed while attached leaves the name
    /// behind: `nodeshm gc` removes it).
    OnLastDetach,
    /// Never: the arena persists until removed (`nodeshm gc`, `rm`), e.g. for tools.
    Never,
}

impl Unlink {
    pub(crate) fn encode(self) -> (u32, u32) {
        match self {
            Unlink::AfterAttach { peers } => (0, peers),
            Unlink::OnLastDetach => (1, 0),
            Unlink::Never => (2, 0),
        }
    }

    pub(crate) fn decode(policy: u32, peers: u32) -> Self {
        match policy {
            0 => Unlink::AfterAttach { peers },
            1 => Unlink::OnLastDetach,
            _ => Unlink::Never,
        }
    }
}

impl std::fmt::Display for Unlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unlink::AfterAttach { peers } => write!(f, "after-attach ({peers} peers)"),
            Unlink::OnLastDetach => f.write_str("on-last-detach"),
            Unlink::Never => f.write_str("never"),
        }
    }
}

/// Page size policy of an arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugePages {
    /// The system's base pages (default).
    #[default]
    Never,
    /// Ask for transparent huge pages (madvise MADV_HUGEPAGE); tmpfs honours it when mounted
    /// with `huge=advise` or `huge=always` (or shmem_enabled says so).
    Transparent,
    /// hugetlbfs pages: the backing directory must be a hugetlbfs mount with enough free huge
    /// pages (an error at creation otherwise); the size is rounded up to the huge page size.
    Required,
}

/// How a process reserves (allocates) its pages of an arena ([`crate::arena::Arena::reserve`]).
/// Each way makes a full backing file system an error at creation instead of a SIGBUS later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reservation {
    /// `Populate` for shares of [`POPULATE_FROM`] bytes and more, `Fallocate` below (measured:
    /// populate is fastest to "ready and touched" for large arenas, fallocate to "ready" for
    /// small ones, where a few page faults later cost less than zeroing now; README,
    /// Performance).
    #[default]
    Auto,
    /// `MADV_POPULATE_WRITE` (Linux 5.14+) on the share: allocates, zeroes and maps the pages
    /// into this process's page tables in one pass, so its first writes take no page fault.
    /// Falls back to `Fallocate` on older kernels.
    Populate,
    /// `posix_fallocate` on the share: allocates and zeroes the pages without mapping them;
    /// every process then takes one minor fault per page it touches first.
    Fallocate,
    /// `posix_fallocate`, then `MADV_POPULATE_WRITE` (for comparison: two passes).
    FallocateThenPopulate,
}

/// The share size from which [`Reservation::Auto`] populates: 4 MiB.
pub const POPULATE_FROM: u64 = 4 << 20;

/// Options for [`crate::arena::Arena::create`] and [`crate::arena::Arena::attach_with`].
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) size: u64,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) mode: u32,
    pub(crate) unlink: Unlink,
    pub(crate) job_token: u64,
    pub(crate) label: String,
    pub(crate) lock_timeout: Duration,
    pub(crate) attach_timeout: Duration,
    pub(crate) expected_names: Option<u64>,
    pub(crate) huge: HugePages,
    pub(crate) reserve_at_create: bool,
    pub(crate) reservation: Reservation,
    pub(crate) trusted_uids: Vec<u32>,
    pub(crate) trusted_gids: Vec<u32>,
}

impl Options {
    /// An arena of `size` bytes (rounded up to the page size), mode 0600, in the default
    /// backing directory, unlinked on last detach, 30 s lock and attach timeouts.
    pub fn new(size: u64) -> Self {
        Options {
            size,
            dir: None,
            mode: 0o600,
            unlink: Unlink::OnLastDetach,
            job_token: 0,
            label: String::new(),
            lock_timeout: Duration::from_secs(30),
            attach_timeout: Duration::from_secs(30),
            expected_names: None,
            huge: HugePages::Never,
            reserve_at_create: true,
            reservation: Reservation::Auto,
            trusted_uids: Vec::new(),
            trusted_gids: Vec::new(),
        }
    }

    /// Backing directory (default: `$NODESHM_SHM_DIR`, else `/dev/shm`).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// File mode of the shm object (default 0o600: only this user). Permission bits only, and
    /// the owner must keep read and write; anything else fails at creation with
    /// `InvalidArgument`. A group-writable mode lets every member of the group attach (with
    /// [`Options::trust_group`] on their side) and so trusts them all: any writer can corrupt
    /// the arena's process-shared mutex.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Also attach to arenas owned by `uid` (by default only the caller's own effective uid is
    /// trusted: attaching an arena another user owns fails with `Untrusted`). Trusting a user
    /// means trusting every byte they can write into the arena.
    pub fn trust_uid(mut self, uid: u32) -> Self {
        self.trusted_uids.push(uid);
        self
    }

    /// Also attach to arenas whose file belongs to group `gid`, whoever owns them: every member
    /// of the group is trusted (see [`Options::mode`]).
    pub fn trust_group(mut self, gid: u32) -> Self {
        self.trusted_gids.push(gid);
        self
    }

    /// Unlink policy.
    pub fn unlink(mut self, unlink: Unlink) -> Self {
        self.unlink = unlink;
        self
    }

    /// A token recorded in the header (the MPI layer puts the job's token here).
    pub fn job_token(mut self, token: u64) -> Self {
        self.job_token = token;
        self
    }

    /// A free-form description recorded in the header (at most 255 bytes are kept).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Longest wait for the arena lock.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Longest wait for an arena to appear when attaching.
    pub fn attach_timeout(mut self, timeout: Duration) -> Self {
        self.attach_timeout = timeout;
        self
    }

    /// Page size policy (default [`HugePages::Never`]). Pass the same to `attach_with` so
    /// that every process's mapping gets the same advice.
    pub fn huge_pages(mut self, huge: HugePages) -> Self {
        self.huge = huge;
        self
    }

    /// Whether `create` reserves the whole arena (default true). With false it reserves only
    /// the pages it writes, and the processes must call [`crate::arena::Arena::reserve`] on
    /// every page (each on its share, in parallel) before anyone allocates: the MPI manager
    /// does this, so that reservation is parallel and first touch is real.
    pub fn reserve_at_create(mut self, reserve: bool) -> Self {
        self.reserve_at_create = reserve;
        self
    }

    /// How [`crate::arena::Arena::reserve`] allocates pages (default [`Reservation::Auto`]).
    /// `create` itself always uses `posix_fallocate` for what it reserves.
    pub fn reservation(mut self, how: Reservation) -> Self {
        self.reservation = how;
        self
    }

    /// Reserve a name directory for about this many names (default: one per 16 KiB of arena),
    /// 8 bytes each. The directory uses only what the live names need (a chain per name,
    /// growing as they come and shrinking as they go), so a large reservation costs memory, not
    /// speed. More names still work, with longer hash chains.
    pub fn expected_names(mut self, names: u64) -> Self {
        self.expected_names = Some(names);
        self
    }
}
