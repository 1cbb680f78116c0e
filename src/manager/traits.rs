//! What an allocator is made from: Umpire's "traits", as a builder.

use std::path::PathBuf;
use std::time::Duration;

use crate::arena::{HugePages, Reservation};
use crate::placement::NumaPolicy;
use crate::topology::Scope;

/// When an allocator's shm name disappears from the backing directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnlinkPolicy {
    /// As soon as every rank of the scope instance has mapped the arena (the default): from
    /// then on no crash of any process can leak the segment.
    #[default]
    AfterAttach,
    /// When the last rank drops the allocator; a killed rank leaves it for `nodeshm gc`.
    OnLastDetach,
    /// Never: the arena outlives the job, for tools that attach by name later
    /// (see [`crate::Allocator::shm_path`]); remove it with `nodeshm gc` or `rm`.
    Never,
}

/// The traits of a `SHARED::` allocator. Every rank must pass equal traits to
/// [`crate::ResourceManager::make_resource`] (checked).
///
/// Build them with the methods (`Traits::new(size).scope(Scope::Socket)`); read them through
/// the public fields (`traits.scope`). `#[non_exhaustive]`: new traits may be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traits {
    /// Arena size in bytes (rounded up to the page size; at least the minimum arena).
    pub size: u64,
    /// Which ranks share one arena.
    pub scope: Scope,
    /// When the shm name disappears.
    pub unlink: UnlinkPolicy,
    /// File mode of the shm objects (permission bits; owner read and write required).
    pub mode: u32,
    /// Backing directory (`None`: `$NODESHM_SHM_DIR`, else `/dev/shm`).
    pub dir: Option<PathBuf>,
    /// How long peers wait for their leader's arena.
    pub attach_timeout: Duration,
    /// How long any wait for an arena lock may take.
    pub lock_timeout: Duration,
    /// Names expected (directory size), if not derived from the size.
    pub expected_names: Option<u64>,
    /// NUMA placement of the arena's pages.
    pub numa: NumaPolicy,
    /// Huge pages.
    pub huge_pages: HugePages,
    /// Map every page in every rank at creation.
    pub prefault: bool,
    /// How each rank reserves its share of the pages at creation.
    pub reservation: Reservation,
}

impl Traits {
    /// An arena of `size` bytes (rounded up to the page size; it never grows), node scope,
    /// unlinked after attach, mode 0600, in `$NODESHM_SHM_DIR` or `/dev/shm`, 60 s attach and
    /// 30 s lock timeouts.
    pub fn new(size: u64) -> Self {
        Traits {
            size,
            scope: Scope::Node,
            unlink: UnlinkPolicy::AfterAttach,
            mode: 0o600,
            dir: None,
            attach_timeout: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(30),
            expected_names: None,
            numa: NumaPolicy::Auto,
            huge_pages: HugePages::Never,
            prefault: false,
            reservation: Reservation::Auto,
        }
    }

    /// Which ranks share one arena (default [`Scope::Node`]).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// When the shm name is removed (default [`UnlinkPolicy::AfterAttach`]).
    pub fn unlink(mut self, unlink: UnlinkPolicy) -> Self {
        self.unlink = unlink;
        self
    }

    /// File mode of the shm object (default 0o600).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Backing directory (default `$NODESHM_SHM_DIR`, else `/dev/shm`).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Longest wait of a peer for its leader's arena.
    pub fn attach_timeout(mut self, timeout: Duration) -> Self {
        self.attach_timeout = timeout;
        self
    }

    /// Longest wait for the arena lock (and the default for [`crate::Allocator::lock`]).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Reserve a name directory for about this many live names (8 bytes each; see
    /// [`crate::arena::Options::expected_names`]): the directory uses up to one chain per
    /// live name within this reservation.
    pub fn expected_names(mut self, names: u64) -> Self {
        self.expected_names = Some(names);
        self
    }

    /// NUMA placement of the arena's pages (default [`NumaPolicy::Auto`]).
    pub fn numa(mut self, numa: NumaPolicy) -> Self {
        self.numa = numa;
        self
    }

    /// Page size (default [`HugePages::Never`]). `Required` uses `dir` if it is a hugetlbfs
    /// mount, else the first hugetlbfs mount of the system.
    pub fn huge_pages(mut self, huge: HugePages) -> Self {
        self.huge_pages = huge;
        self
    }

    /// After creation, every rank maps all of the arena's pages into its page tables (in
    /// parallel), so that first accesses take no page faults; the time it took is in
    /// [`crate::Allocator::placement`]. Default off.
    pub fn prefault(mut self, prefault: bool) -> Self {
        self.prefault = prefault;
        self
    }

    /// How each rank reserves its share of the arena's pages at creation (default
    /// [`Reservation::Auto`]: shares of 4 MiB and more are allocated and mapped in one pass, so
    /// a rank's first writes to its own share take no page fault; smaller ones are only
    /// allocated, which makes small allocators ready sooner).
    pub fn reservation(mut self, how: Reservation) -> Self {
        self.reservation = how;
        self
    }

    /// What must be equal on every rank, as text (for the collective check and its message).
    pub(crate) fn describe(&self) -> String {
        format!(
            "size={} scope={} unlink={:?} mode={:o} dir={:?} names={:?} numa={:?} huge={:?} prefault={} reserve={:?}",
            self.size,
            self.scope,
            self.unlink,
            self.mode,
            self.dir,
            self.expected_names,
            self.numa,
            self.huge_pages,
            self.prefault,
            self.reservation
        )
    }
}
