//! nodeshm: named shared-memory allocators for the MPI ranks of one node, one socket or one
//! NUMA domain.
//!
//! A [`ResourceManager`] builds named `SHARED::` allocators from [`Traits`] (arena size; scope
//! node, socket or NUMA domain), finds each allocator's peer ranks with hwloc and MPI
//! communicator splitting, and backs each allocator with one fixed shared-memory arena per
//! scope instance. Ranks allocate *named* blocks in it (same name, same memory) and get the
//! allocator's own communicator to synchronise on.
//!
//! ```no_run
//! use mpi::traits::*;
//! use nodeshm::{ResourceManager, Scope, Traits};
//!
//! fn main() -> nodeshm::Result<()> {
//!     let universe = mpi::initialize().unwrap();
//!     let world = universe.world();
//!     let rm = ResourceManager::new(&world)?; // collective over `world`
//!     let traits = Traits::new(64 << 20).scope(Scope::Socket);
//!     let alloc = rm.make_resource("SHARED::tables", traits)?; // collective
//!     // Collective over the allocator's ranks: its rank 0 fills the table once, all read it.
//!     let eos = alloc.get_or_init::<f64>("eos", 1 << 20, |t| {
//!         t.iter_mut().enumerate().for_each(|(i, v)| *v = i as f64)
//!     })?;
//!     // Independent: the same name gives the same memory on every rank of the socket.
//!     let halo = alloc.allocate("halo", 4096)?;
//!     halo.write_at(alloc.communicator().rank() as usize, &[eos[7]])?;
//!     alloc.communicator().barrier();
//!     alloc.deallocate(halo)?;
//!     Ok(())
//! }
//! ```
//!
//! Without MPI, [`arena::Arena`] gives the same named blocks to any processes that attach by
//! name (`default-features = false`).
//!
//! # Layers
//!
//! Bottom up, each using only those below it:
//! - [`arena`]: one fixed shared-memory arena in one POSIX shm object (no MPI needed);
//! - [`topology`] (hwloc with the `hwloc` feature): where this process runs;
//! - [`comm`] (feature `mpi`): communicator splitting and collective agreement;
//! - [`placement`] (feature `mpi`): NUMA policy and page size of an allocator's arena;
//! - [`manager`] (feature `mpi`): [`ResourceManager`], [`Traits`], [`Allocator`];
//! - [`capi`] (feature `mpi`): the C ABI of `include/nodeshm.h`.
//!
//! # Cargo features
//!
//! | feature | default | what it gives | needs |
//! |---|---|---|---|
//! | `mpi` | yes | the resource manager, allocators and the C ABI | an MPI library (rsmpi builds against `$MPICC`, else `mpicc`) and libclang |
//! | `hwloc` | yes | socket and NUMA scope, memory placement | libhwloc |
//! | `serde` | no | `Serialize` on the figures types ([`arena::Stats`], [`arena::ArenaInfo`], [`arena::EntryInfo`], ...) | |
//!
//! # Shared memory and data races
//!
//! A block is memory other processes read and write while this one runs, which Rust's borrow
//! rules cannot see. The safe ways to touch it never create a Rust reference to plain data in
//! it: atomics ([`Block::as_atomic_u64`], [`Block::as_atomic_u32`], [`Block::as_atomic_u8`]),
//! and copies in and out ([`Block::write_at`], [`Block::read_at`], [`Block::to_vec`]) made with
//! volatile accesses. If another process writes the same bytes during a copy, the copy holds a
//! mix of old and new bytes: wrong data, never undefined behaviour. Ordering between processes
//! is yours to arrange (a barrier on [`Allocator::communicator`], the allocator's
//! [`lock`](Allocator::lock), or atomics). The `unsafe` slice views
//! ([`Block::as_slice`], [`Block::as_mut_slice`]) are for code that guarantees no process
//! writes (or, for the mutable view, touches) the block while the slice lives;
//! [`Allocator::get_or_init`] gives a safe read-only table under that contract.
#![warn(missing_docs)]
// The crate docs link to the MPI layer, which a build without `mpi` does not have.
#![cfg_attr(not(feature = "mpi"), allow(rustdoc::broken_intra_doc_links))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod arena;
pub mod error;
pub mod sys;
pub mod topology;

#[cfg(feature = "mpi")]
pub mod capi;
#[cfg(feature = "mpi")]
pub mod comm;
#[cfg(feature = "mpi")]
pub mod manager;
#[cfg(feature = "mpi")]
pub mod placement;

pub use arena::{Arena, Block, HugePages, Reservation};
pub use error::{Error, ErrorCode, Result};
#[cfg(feature = "mpi")]
pub use manager::{Allocator, ResourceManager, SharedSlice, Traits, UnlinkPolicy};
#[cfg(feature = "mpi")]
pub use placement::{NumaPolicy, Placement};
pub use topology::{Scope, ScopeInstance};
