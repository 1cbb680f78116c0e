//! A `SHARED::` allocator: one arena per scope instance plus the communicator of the ranks
//! that share it.

use std::ops::Deref;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use mpi::topology::{Communicator, SimpleCommunicator};

use crate::arena::{Arena, Block, EntryInfo, Stats, UserLock};
use crate::comm::{self, OwnedComm};
use crate::error::{Error, Result};
use crate::manager::Traits;
use crate::placement::{self, Placement};
use crate::topology::ScopeInstance;

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) traits: Traits,
    pub(crate) instance: ScopeInstance,
    pub(crate) prefault: Option<Duration>,
    // Field order is drop order: release blocks and unmap before freeing the communicator.
    pub(crate) arena: Arena,
    pub(crate) comm: OwnedComm,
}

/// A named shared allocator (cheap to clone; clones share one arena mapping). Obtained from
/// [`crate::ResourceManager::make_resource`] or `get_allocator`.
///
/// Drop every clone before MPI is finalized so its communicator is freed cleanly (if MPI is
/// finalized first, the communicator handle is abandoned rather than aborting the job).
#[derive(Clone)]
pub struct Allocator(pub(crate) Rc<Inner>);

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocator")
            .field("name", &self.0.name)
            .field("scope_instance", &self.0.instance)
            .field("arena", &self.0.arena)
            .finish()
    }
}

impl Allocator {
    /// The allocator's name (`SHARED::...`).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The traits it was made with.
    pub fn traits(&self) -> &Traits {
        &self.0.traits
    }

    /// The scope instance this rank's arena serves (e.g. socket 1).
    pub fn scope_instance(&self) -> ScopeInstance {
        self.0.instance
    }

    /// The ranks that share this arena, as a communicator of their own (rank 0 created it).
    /// Umpire's `get_communicator_for_allocator`.
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.0.comm
    }

    /// Where this rank's arena memory is: the policy asked for, what was applied, and what the
    /// kernel reports for this rank's mapping right now (NUMA nodes and pages per node, page
    /// size, huge pages, resident bytes), plus how long prefaulting took.
    pub fn placement(&self) -> Placement {
        let inner = &self.0;
        let view = placement::kernel_view(inner.arena.base_ptr() as usize);
        Placement {
            numa_asked: inner.traits.numa,
            numa_applied: inner.arena.info().placement,
            kernel_policy: view.policy,
            pages_per_node: view.pages_per_node,
            huge_asked: inner.traits.huge_pages,
            page_size: view.page_size,
            thp_bytes: view.thp_bytes,
            hugetlb_bytes: view.hugetlb_bytes,
            resident_bytes: view.resident_bytes,
            prefault: inner.prefault,
        }
    }

    /// The arena itself, for everything the allocator does not wrap.
    pub fn arena(&self) -> &Arena {
        &self.0.arena
    }

    /// Where the arena's shm object is (or was, once unlinked).
    pub fn shm_path(&self) -> &Path {
        self.0.arena.path()
    }

    /// Returns block `name` of `bytes` bytes, creating it zeroed if needed. Independent (not
    /// collective): every rank of the scope instance that asks for the same name gets the same
    /// memory. See [`Arena::allocate`] for the errors.
    pub fn allocate(&self, name: &str, bytes: u64) -> Result<Block<'_>> {
        self.0.arena.allocate(name, bytes)
    }

    /// [`Allocator::allocate`] with an alignment (a power of two up to the page size).
    pub fn allocate_aligned(&self, name: &str, bytes: u64, align: u64) -> Result<Block<'_>> {
        self.0.arena.allocate_aligned(name, bytes, align)
    }

    /// Releases one reference this rank holds; the last one anywhere frees the block.
    pub fn deallocate(&self, block: Block<'_>) -> Result<()> {
        self.0.arena.deallocate(block)
    }

    /// Hands one reference to the arena so the block outlives this rank (see [`Arena::persist`]).
    pub fn persist(&self, block: Block<'_>) -> Result<()> {
        self.0.arena.persist(block)
    }

    /// The block `name` if it exists, taking a reference (release it with `deallocate`).
    pub fn find(&self, name: &str) -> Result<Option<Block<'_>>> {
        self.0.arena.find(name)
    }

    /// Bytes in use in this rank's arena (Umpire's `getActualSize`).
    pub fn actual_size(&self) -> Result<u64> {
        self.0.arena.actual_size()
    }

    /// Usage figures of this rank's arena.
    pub fn stats(&self) -> Result<Stats> {
        self.0.arena.stats()
    }

    /// Gives this rank's arena's parked blocks (removed small names kept for reuse) back to
    /// its heap, merged with their neighbours (Umpire's `coalesce`); see [`Arena::coalesce`].
    pub fn coalesce(&self) -> Result<()> {
        self.0.arena.coalesce()
    }

    /// Every named block of this rank's arena.
    pub fn entries(&self) -> Result<Vec<EntryInfo>> {
        self.0.arena.entries()
    }

    /// Takes the arena's user lock (robust: a holder that dies does not block the others; the
    /// guard then reports `previous_owner_died`). Waits at most the traits' lock timeout.
    pub fn lock(&self) -> Result<UserLock<'_>> {
        self.0.arena.lock_user(self.0.traits.lock_timeout)
    }

    /// Like [`Allocator::lock`] with an explicit timeout.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<UserLock<'_>> {
        self.0.arena.lock_user(timeout)
    }

    /// A read-only table of `len` values shared by the scope instance: rank 0 of
    /// [`Allocator::communicator`] allocates it and, if it is new, fills it with `init`; the
    /// others wait, then map the same block. Collective over the allocator's communicator:
    /// every rank returns the same error if any rank fails.
    pub fn get_or_init<T: bytemuck::Pod>(
        &self,
        name: &str,
        len: usize,
        init: impl FnOnce(&mut [T]),
    ) -> Result<SharedSlice<'_, T>> {
        let comm = &*self.0.comm;
        let size = (len as u64)
            .checked_mul(std::mem::size_of::<T>() as u64)
            .filter(|&b| b > 0);
        let bad_size = || {
            Error::InvalidArgument(format!(
                "get_or_init({name:?}): {len} values of {} bytes is not a valid size",
                std::mem::size_of::<T>()
            ))
        };
        let align = (std::mem::align_of::<T>() as u64).max(64);
        let first = match (size, comm.rank() == 0) {
            (None, _) => Err(bad_size()),
            (Some(_), false) => Ok(None),
            (Some(bytes), true) => self.allocate_aligned(name, bytes, align).map(|block| {
                if block.created() {
                    // SAFETY: the block was just created by this rank; the peers do not map it
                    // until the agreement below, so this rank has exclusive access.
                    let raw = unsafe { block.as_mut_slice() };
                    init(bytemuck::cast_slice_mut(raw));
                }
                Some(SharedSlice::new(self, block))
            }),
        };
        let first = comm::agree(comm, first)?;
        let mine = match first {
            Some(slice) => Ok(slice),
            None => self
                .allocate_aligned(name, size.ok_or_else(bad_size)?, align)
                .map(|block| SharedSlice::new(self, block)),
        };
        comm::agree(comm, mine)
    }
}

/// A shared read-only table from [`Allocator::get_or_init`]; derefs to `&[T]` and releases its
/// reference on drop.
pub struct SharedSlice<'a, T: bytemuck::Pod> {
    allocator: &'a Allocator,
    block: Block<'a>,
    values: &'a [T],
}

impl<'a, T: bytemuck::Pod> SharedSlice<'a, T> {
    fn new(allocator: &'a Allocator, block: Block<'a>) -> Self {
        // SAFETY: after get_or_init's agreement nobody writes the table (documented contract:
        // it is read-only once initialised); the block lives until this value drops.
        let bytes = unsafe { block.as_slice() };
        SharedSlice {
            allocator,
            block,
            values: bytemuck::cast_slice(bytes),
        }
    }

    /// The underlying block.
    pub fn block(&self) -> Block<'a> {
        self.block
    }

    /// Keeps the table in the arena after this rank is done with it (see [`Arena::persist`]).
    pub fn persist(self) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        this.allocator.persist(this.block)
    }
}

impl<T: bytemuck::Pod> Deref for SharedSlice<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.values
    }
}

impl<T: bytemuck::Pod> Drop for SharedSlice<'_, T> {
    fn drop(&mut self) {
        let _ = self.allocator.deallocate(self.block);
    }
}
