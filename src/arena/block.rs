//! A named block handed out by an arena.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

use bytemuck::Pod;

use crate::error::{Error, Result};

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

    /// The block as 32-bit atomics (its first `len / 4` words).
    pub fn as_atomic_u32(&self) -> &'a [AtomicU32] {
        // SAFETY: as for `as_atomic_u64`, with 4-byte elements.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), (self.len / 4) as usize) }
    }

    /// The block as byte atomics: every byte, also of blocks shorter than a word.
    pub fn as_atomic_u8(&self) -> &'a [AtomicU8] {
        // SAFETY: as for `as_atomic_u64`; bytes need no alignment.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len as usize) }
    }

    /// Copies `values` into the block, starting at element `index` (counted in `T`s). Safe:
    /// other processes may read or write the same bytes meanwhile; they then see a mix of old
    /// and new bytes (see the crate docs on data races), never undefined behaviour here.
    ///
    /// Fails with `InvalidArgument` when the values do not fit in the block (the error gives
    /// the numbers) or the block is not aligned for `T`.
    pub fn write_at<T: Pod>(&self, index: usize, values: &[T]) -> Result<()> {
        let at = self.typed_range::<T>(index, values.len())?;
        let src: &[u8] = bytemuck::cast_slice(values);
        // SAFETY: `typed_range` checked that the range lies inside the block, which lies inside
        // the mapping for 'a; the copy uses volatile accesses (another process's concurrent
        // access is outside this program's memory model; volatile keeps each access real).
        unsafe { copy_volatile(src.as_ptr(), self.ptr.as_ptr().add(at), src.len()) };
        Ok(())
    }

    /// Copies elements of the block, starting at element `index`, into `out`. Safe in the same
    /// way as [`Block::write_at`], with the same errors.
    pub fn read_at<T: Pod>(&self, index: usize, out: &mut [T]) -> Result<()> {
        let at = self.typed_range::<T>(index, out.len())?;
        let dst: &mut [u8] = bytemuck::cast_slice_mut(out);
        // SAFETY: as in `write_at`; `dst` is a distinct Rust buffer.
        unsafe { copy_volatile(self.ptr.as_ptr().add(at), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// The whole block copied out as `T`s (`len / size_of::<T>()` of them).
    pub fn to_vec<T: Pod>(&self) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); self.len as usize / std::mem::size_of::<T>().max(1)];
        self.read_at(0, &mut out)?;
        Ok(out)
    }

    /// Byte offset of elements `index..index + count` of `T`, checked to fit and be aligned.
    fn typed_range<T: Pod>(&self, index: usize, count: usize) -> Result<usize> {
        let size = std::mem::size_of::<T>();
        let end = index
            .checked_add(count)
            .and_then(|n| n.checked_mul(size))
            .filter(|&end| end as u64 <= self.len);
        let Some(_) = end else {
            return Err(Error::InvalidArgument(format!(
                "elements {index}..{index}+{count} of {size} bytes do not fit in a block of \
                 {} bytes",
                self.len
            )));
        };
        if self.ptr.as_ptr() as usize % std::mem::align_of::<T>() != 0 {
            return Err(Error::InvalidArgument(format!(
                "the block is not aligned for a type of alignment {}; allocate it with \
                 allocate_aligned",
                std::mem::align_of::<T>()
            )));
        }
        Ok(index * size)
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

/// Copies `n` bytes with volatile accesses, a word at a time where both sides allow it.
///
/// # Safety
/// `src` is readable and `dst` writable for `n` bytes; the ranges do not overlap.
unsafe fn copy_volatile(src: *const u8, dst: *mut u8, n: usize) {
    let mut i = 0;
    let word = std::mem::size_of::<u64>();
    // SAFETY: every access is within `0..n` of both ranges, per the contract; word accesses
    // are made only at offsets where both pointers are 8-byte aligned.
    unsafe {
        if (src as usize) % word == (dst as usize) % word {
            while i < n && (dst as usize + i) % word != 0 {
                dst.add(i).write_volatile(src.add(i).read_volatile());
                i += 1;
            }
            while i + word <= n {
                let v = src.add(i).cast::<u64>().read_volatile();
                dst.add(i).cast::<u64>().write_volatile(v);
                i += word;
            }
        }
        while i < n {
            dst.add(i).write_volatile(src.add(i).read_volatile());
            i += 1;
        }
    }
}
