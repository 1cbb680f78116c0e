//! A named block handed out by an arena.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// A reference to a named block's memory, valid while the [`crate::arena::Arena`] it came from
/// lives (the lifetime enforces it). Copying a Block does not take another reference: release
/// each `allocate`/`find` once with `deallocate`.
///
/// The memory is shared with other processes, so Rust cannot prove exclusive access: use
/// [`Block::as_atomic_u64`] for safe shared access, or the `unsafe` slice views under your own
/// synchronisation (a barrier on the allocator's communicator, or the user lock).
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    ptr: NonNull<u8>,
    len: u64,
    offset: u64,
    created: bool,
    _arena: PhantomData<&'a ()>,
}

impl<'a> Block<'a> {
    pub(crate) fn new(ptr: NonNull<u8>, len: u64, offset: u64, created: bool) -> Self {
        Block {
            ptr,
            len,
            offset,
            created,
            _arena: PhantomData,
        }
    }

    /// Address of the first byte in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Size in bytes, as asked for.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: blocks have at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset from the start of the arena: the same in every process.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True if this call created the block (it was zeroed); false if it existed already.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The block as 64-bit atomics (its first `len / 8` words): safe to read and write from
    /// any number of processes at once.
    pub fn as_atomic_u64(&self) -> &'a [AtomicU64] {
        // SAFETY: block data is at least 16-byte aligned, lies inside the arena mapping that
        // outlives 'a, and AtomicU64 permits concurrent access from other processes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), (self.len / 8) as usize) }
    }

    /// The block as bytes.
    ///
    /// # Safety
    /// No process may write the block while the slice is alive.
    pub unsafe fn as_slice(&self) -> &'a [u8] {
        // SAFETY: in bounds of the mapping (which outlives 'a); no concurrent writers per the
        // caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }

    /// The block as mutable bytes.
    ///
    /// # Safety
    /// No other process or thread may read or write the block while the slice is alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &'a mut [u8] {
        // SAFETY: in bounds of the mapping (which outlives 'a); exclusive per the contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
    }
}
