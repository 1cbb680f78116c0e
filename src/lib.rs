//! nodeshm: named shared-memory allocators for the MPI ranks of one node, socket or NUMA domain.
//!
//! Layers, bottom up (each uses only those below it):
//! - [`arena`]: one fixed shared-memory arena in one POSIX shm object (no MPI needed);
//! - [`topology`] (hwloc with the `hwloc` feature): where this process runs;
//! - `comm` (feature `mpi`): communicator splitting and collective agreement;
//! - `placement` (feature `mpi`): NUMA policy and page size of an allocator's arena;
//! - `manager` (feature `mpi`): [`ResourceManager`], [`Traits`], [`Allocator`];
//! - `capi` (feature `mpi`): the C ABI of `include/nodeshm.h`.

pub mod arena;
pub mod error;
pub mod topology;

#[cfg(feature = "mpi")]
pub mod capi;
#[cfg(feature = "mpi")]
pub mod comm;
#[cfg(feature = "mpi")]
pub mod manager;
#[cfg(feature = "mpi")]
pub mod placement;

pub use arena::{Arena, Block, HugePages};
pub use error::{Error, ErrorCode, Result};
#[cfg(feature = "mpi")]
pub use manager::{Allocator, ResourceManager, SharedSlice, Traits, UnlinkPolicy};
#[cfg(feature = "mpi")]
pub use placement::{NumaPolicy, Placement};
pub use topology::{Scope, ScopeInstance};
