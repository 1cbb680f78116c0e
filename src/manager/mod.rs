//! The MPI-aware public API: a [`ResourceManager`] builds named `SHARED::` allocators from
//! [`Traits`], finds each allocator's peer ranks (node, then socket or NUMA node from hwloc),
//! and backs each scope instance with one arena.

mod allocator;
mod traits;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::{Rc, Weak};

use std::time::Duration;

use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

pub use allocator::{Allocator, SharedSlice};
pub use traits::{Traits, UnlinkPolicy};

use crate::arena::{Arena, HugePages, Options, Unlink, SHM_PREFIX};
use crate::comm::{self, OwnedComm};
use crate::error::{Error, Result};
use crate::placement;
use crate::topology::{ScopeInstance, Topology};

/// Prefix every allocator name carries (as in Umpire).
pub const NAME_PREFIX: &str = "SHARED::";

/// Environment variable whose value (letters, digits, `-`, `_`; at most 32) is added to every
/// shm name the manager makes, e.g. a batch job id, so that a job's segments can be found
/// with `ls /dev/shm | grep TAG` (test harnesses use it to check only their own names).
pub const NAME_TAG_ENV: &str = "NODESHM_NAME_TAG";

/// Builds the `SHARED::` allocators of one communicator and finds them again by name.
///
/// The manager does not keep allocators alive: it remembers them by name for
/// [`ResourceManager::get_allocator`] while any handle exists, and an allocator whose last
/// handle is dropped is gone (its arena unmapped, its communicator freed) and its name can be
/// made again.
pub struct ResourceManager {
    allocators: RefCell<BTreeMap<String, Weak<allocator::Inner>>>,
    /// How often each name was made: the same on every rank (make_resource is collective), so a
    /// name made again gets shm objects of its own even while some rank still drops the old.
    generations: RefCell<BTreeMap<String, u32>>,
    name_tag: String,
    topology: Topology,
    job_token: u64,
    node: OwnedComm,
    comm: OwnedComm,
}

impl std::fmt::Debug for ResourceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceManager")
            .field("comm", &self.comm)
            .field("node", &self.node)
            .field("job_token", &format_args!("{:016x}", self.job_token))
            .finish()
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

impl ResourceManager {
    /// Collective over `comm` (any communicator, not only the world): duplicates it, splits
    /// it by node, loads the hwloc topology and draws the job token that goes into every shm
    /// name (so two jobs never share or re-attach a segment). Every rank returns the same error
    /// if any rank fails.
    pub fn new<C: Communicator>(comm: &C) -> Result<Self> {
        let comm = comm::duplicate(comm);
        let node = comm::split_node(&comm);
        let job_token = comm::job_token(&comm);
        let local = Topology::load()
            .map_err(|e| Error::Binding(format!("on {}: {e}", hostname())))
            .and_then(|topology| Ok((topology, name_tag()?)));
        let (topology, name_tag) = comm::agree(&comm, local)?;
        Ok(ResourceManager {
            allocators: RefCell::new(BTreeMap::new()),
            generations: RefCell::new(BTreeMap::new()),
            name_tag,
            topology,
            job_token,
            node,
            comm,
        })
    }

    /// The manager's own communicator (a duplicate of the one it was made with).
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.comm
    }

    /// The ranks of this node.
    pub fn node_communicator(&self) -> &SimpleCommunicator {
        &self.node
    }

    /// The job token in every shm name this manager makes.
    pub fn job_token(&self) -> u64 {
        self.job_token
    }

    /// The topology scopes are computed from.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Makes allocator `name` (which must start with `SHARED::`): one arena per scope instance,
    /// created by the instance's lowest rank and mapped by its other ranks.
    ///
    /// Collective over the manager's communicator. Every rank must pass the same name and
    /// traits; every rank returns the same error if they differ, if the name is taken or
    /// malformed, if a rank's CPU binding spans several scope instances, or if any leader fails
    /// to create (e.g. the backing directory is full) or any peer fails to attach.
    ///
    /// A name whose allocator was dropped on every rank can be made again (it gets new shm
    /// objects). Dropping an allocator's last handle frees its communicator, which MPI defines
    /// as collective over that communicator: drop it at the same point on every rank sharing
    /// it, as you would call `MPI_Comm_free`.
    pub fn make_resource(&self, name: &str, traits: Traits) -> Result<Allocator> {
        let comm = &*self.comm;
        // Three collective calls when all goes well: the split into scope instances, the
        // leader's outcome (and the fingerprint of its arguments) broadcast to its own peers,
        // and one reduction that checks the arguments are the same everywhere and carries every
        // rank's outcome. An arena made before a mismatch is found is removed again (Fresh).
        let description = format!("name={name:?} {}", traits.describe());
        let local = self.validate(name, &traits).and_then(|()| {
            let instance = self.topology.this_instance(traits.scope).map_err(|e| {
                Error::Binding(format!("rank {} on {}: {e}", comm.rank(), hostname()))
            })?;
            Ok((instance, backing_dir_for(name, &traits)?))
        });
        // Ranks whose own checks failed make a group of their own, with no arena.
        let color = match &local {
            Ok((instance, _)) => i32::try_from(instance.index).unwrap_or(i32::MAX - 1),
            Err(_) => i32::MAX,
        };
        let scope_comm = comm::split_by(&self.node, color)?;
        if local.is_ok() {
            // Only a checked name: rsmpi's set_name panics on a NUL byte.
            scope_comm.set_name(name);
        }
        let generation = {
            let mut made = self.generations.borrow_mut();
            let count = made.entry(name.to_string()).or_insert(0);
            *count += 1;
            *count
        };
        let peers = scope_comm.size() as u32 - 1;
        let leader = scope_comm.rank() == 0;
        let planned = local.and_then(|(instance, dir)| {
            let shm_name = self.shm_name(name, generation, &instance);
            let options = self.arena_options(name, &traits, &instance, peers, dir);
            let fresh = if leader {
                let plan = placement::plan(&self.topology, &instance, traits.numa);
                let mut applied = String::new();
                let arena = Arena::create_with(&shm_name, &options, |area| {
                    applied = placement::apply(&self.topology, area, &plan)?;
                    Ok(())
                })?;
                arena.set_placement(&applied);
                Some(Fresh(Some(arena)))
            } else {
                None
            };
            Ok((instance, shm_name, options, fresh))
        });
        // Only the instance's own ranks wait for its leader. A peer whose leader failed, or
        // passed other arguments, does not attach; the reduction below then reports the
        // mismatch, or the leader's error (a leader is the lowest rank of its instance).
        let mine = comm::fingerprint(&description);
        let (leader_ok, theirs) = comm::broadcast_outcome(&scope_comm, 0, planned.is_ok(), mine);
        let arena = planned.and_then(|(instance, shm_name, options, fresh)| {
            let fresh = match fresh {
                Some(fresh) => fresh,
                None if !leader_ok => return Err(Error::Mpi("the scope leader failed".into())),
                None if theirs != mine => {
                    return Err(Error::InvalidArgument(
                        "arguments differ from the scope leader's".into(),
                    ))
                }
                None => Fresh(Some(Arena::attach_with(&shm_name, &options)?)),
            };
            // Every rank reserves its share of the pages at once: reservation is parallel and
            // the pages of each share are first touched by the rank that reserved them. Nobody
            // uses the arena before all shares are reserved and agreed on, so no access can
            // SIGBUS. If any rank failed, every Fresh is dropped and the leader's name removed.
            let a = fresh.arena();
            let pages = a.size() / a.page_size();
            let (r, n) = (scope_comm.rank() as u64, scope_comm.size() as u64);
            let (first, last) = (pages * r / n, pages * (r + 1) / n);
            a.reserve(first * a.page_size(), (last - first) * a.page_size())?;
            Ok((instance, fresh))
        });
        let (instance, arena) = comm::agree_same(comm, "make_resource", &description, arena)?;
        let arena = arena.keep();
        let prefault = traits.prefault.then(|| {
            // Every rank of the instance at once; the slowest one is what the job waits for.
            let mine = arena.populate().unwrap_or_default().as_secs_f64();
            let mut slowest = 0f64;
            scope_comm.all_reduce_into(&mine, &mut slowest, SystemOperation::max());
            Duration::from_secs_f64(slowest)
        });
        let allocator = Allocator(Rc::new(allocator::Inner {
            name: name.to_string(),
            traits,
            instance,
            prefault,
            arena,
            comm: scope_comm,
        }));
        self.allocators
            .borrow_mut()
            .insert(name.to_string(), Rc::downgrade(&allocator.0));
        Ok(allocator)
    }

    /// A new handle to the allocator `name`, if one was made and a handle to it still exists
    /// (local, not collective).
    pub fn get_allocator(&self, name: &str) -> Option<Allocator> {
        self.allocators
            .borrow()
            .get(name)
            .and_then(Weak::upgrade)
            .map(Allocator)
    }

    /// Names of the allocators that exist (some handle is alive), sorted.
    pub fn allocators(&self) -> Vec<String> {
        let mut map = self.allocators.borrow_mut();
        map.retain(|_, a| a.strong_count() > 0);
        map.keys().cloned().collect()
    }

    /// Collective over the manager's communicator: every rank learns whether any rank's
    /// `local` failed (the first failing rank's error, on every rank), so that checks a caller
    /// makes before a collective call (the C ABI's argument checks) never leave ranks waiting.
    pub fn agree_on<T>(&self, local: Result<T>) -> Result<T> {
        comm::agree(&self.comm, local)
    }

    /// Forgets allocator `name`, returning a handle to it if it still exists: `get_allocator`
    /// no longer finds it, and the arena goes with the last handle. Local.
    pub fn remove_allocator(&self, name: &str) -> Option<Allocator> {
        self.allocators
            .borrow_mut()
            .remove(name)
            .and_then(|w| w.upgrade())
            .map(Allocator)
    }

    fn validate(&self, name: &str, traits: &Traits) -> Result<()> {
        let rest = name.strip_prefix(NAME_PREFIX).unwrap_or_default();
        if name.contains('\0') {
            return Err(Error::InvalidName {
                name: name.chars().take(64).collect(),
                reason: "allocator names cannot contain a NUL byte".into(),
            });
        }
        if rest.is_empty() || name.len() > 200 {
            return Err(Error::InvalidName {
                name: name.chars().take(64).collect(),
                reason: format!(
                    "allocator names start with {NAME_PREFIX:?}, followed by 1 to {} bytes, \
                     e.g. \"SHARED::tables\"",
                    200 - NAME_PREFIX.len()
                ),
            });
        }
        if self.get_allocator(name).is_some() {
            return Err(Error::AlreadyExists(format!(
                "allocator {name:?} (use get_allocator to reuse it)"
            )));
        }
        let (min, max) = (
            crate::arena::layout::minimum_size(traits.expected_names),
            crate::arena::layout::MAX_ARENA_SIZE / 2,
        );
        if traits.size == 0 || traits.size > max {
            return Err(Error::InvalidArgument(format!(
                "allocator {name:?}: size {} bytes; give a size from {} (smaller sizes are \
                 rounded up to it) to {}",
                traits.size,
                crate::sys::human_bytes(min),
                crate::sys::human_bytes(max)
            )));
        }
        if traits.mode & !0o777 != 0 || traits.mode & 0o600 != 0o600 {
            return Err(Error::InvalidArgument(format!(
                "allocator {name:?}: mode {:o}; give permission bits including 0600",
                traits.mode
            )));
        }
        Ok(())
    }

    /// `nodeshm.<uid>.<job token>.<allocator>.<scope><index>`: recognisable in /dev/shm, private
    /// to this user and job, one per scope instance.
    fn shm_name(&self, name: &str, generation: u32, instance: &ScopeInstance) -> String {
        let short: String = name[NAME_PREFIX.len()..]
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(96)
            .collect();
        let digest = name.bytes().fold(0xcbf2_9ce4u32, |h, b| {
            (h ^ b as u32).wrapping_mul(0x0100_0193)
        });
        let again = if generation > 1 {
            format!(".{generation}")
        } else {
            String::new()
        };
        format!(
            "{SHM_PREFIX}.{}.{}{:016x}.{short}-{digest:08x}{again}.{}{}",
            nix::unistd::getuid(),
            self.name_tag,
            self.job_token,
            instance.scope,
            instance.index
        )
    }

    fn arena_options(
        &self,
        name: &str,
        traits: &Traits,
        instance: &ScopeInstance,
        peers: u32,
        dir: Option<PathBuf>,
    ) -> Options {
        // The documented minimum: sizes below it get the smallest arena that works.
        let size = traits
            .size
            .max(crate::arena::layout::minimum_size(traits.expected_names));
        let mut options = Options::new(size)
            .mode(traits.mode)
            .unlink(match traits.unlink {
                UnlinkPolicy::AfterAttach => Unlink::AfterAttach { peers },
                UnlinkPolicy::OnLastDetach => Unlink::OnLastDetach,
                UnlinkPolicy::Never => Unlink::Never,
            })
            .job_token(self.job_token)
            .label(crate::topology::allocator_label(name, instance))
            .attach_timeout(traits.attach_timeout)
            .lock_timeout(traits.lock_timeout)
            .reserve_at_create(false)
            .reservation(traits.reservation)
            .huge_pages(traits.huge_pages);
        if let Some(dir) = dir {
            options = options.dir(dir);
        }
        if let Some(n) = traits.expected_names {
            options = options.expected_names(n);
        }
        options
    }
}

/// The backing directory an allocator asks for: its own, or for required huge pages the
/// system's hugetlbfs mount; `None` for the default.
fn backing_dir_for(name: &str, traits: &Traits) -> Result<Option<PathBuf>> {
    match (&traits.dir, traits.huge_pages) {
        (Some(dir), _) => Ok(Some(dir.clone())),
        (None, HugePages::Required) => placement::hugetlbfs_mount().map(Some).ok_or_else(|| {
            Error::Placement(format!(
                "allocator {name:?} requires huge pages but no hugetlbfs is mounted on {}; \
                 mount one (mount -t hugetlbfs none /dev/hugepages) or pass its directory with \
                 Traits::dir",
                hostname()
            ))
        }),
        (None, _) => Ok(None),
    }
}

/// An arena made during `make_resource`: its name is removed if the call fails afterwards.
struct Fresh(Option<Arena>);

impl Fresh {
    fn keep(mut self) -> Arena {
        self.0.take().expect("kept once")
    }

    fn arena(&self) -> &Arena {
        self.0.as_ref().expect("a Fresh holds its arena until kept")
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some(arena) = self.0.take() {
            let _ = arena.unlink();
        }
    }
}

/// `NODESHM_NAME_TAG` as a name component ("" when unset), checked on every rank.
fn name_tag() -> Result<String> {
    match std::env::var(NAME_TAG_ENV) {
        Err(_) => Ok(String::new()),
        Ok(tag) if tag.is_empty() => Ok(String::new()),
        Ok(tag)
            if tag.len() <= 32
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(format!("{tag}."))
        }
        Ok(tag) => Err(Error::InvalidName {
            name: tag.chars().take(40).collect(),
            reason: format!(
                "{NAME_TAG_ENV} is added to shm names: use 1 to 32 letters, digits, '-' or '_'"
            ),
        }),
    }
}
