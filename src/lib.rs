//! nodeshm: named shared-memory allocators for the MPI ranks of one node, socket or NUMA domain.
//!
//! Layers, bottom up (each uses only those below it):
//! - [`arena`]: one fixed shared-memory arena in one POSIX shm object (no MPI needed);
//! - `topology` (feature `hwloc`): where this process runs;
//! - `comm` (feature `mpi`): communicator splitting and collective agreement;
//! - `manager` (feature `mpi`): [`ResourceManager`], [`Traits`], [`Allocator`].

pub mod arena;
#[cfg(feature = "mpi")]
pub mod comm;
pub mod error;
pub mod placement;
pub mod topology;

#[cfg(feature = "mpi")]
pub mod capi;
#[cfg(feature = "mpi")]
pub mod manager;

pub use arena::HugePages;
pub use arena::{Arena, Block};
pub use error::{Error, ErrorCode, Result};
#[cfg(feature = "mpi")]
pub use manager::{Allocator, ResourceManager, SharedSlice, Traits, UnlinkPolicy};
pub use placement::{NumaPolicy, Placement};
pub use topology::{Scope, ScopeInstance};
