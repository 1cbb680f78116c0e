"""nodeshm: named shared-memory NumPy arrays for the MPI ranks of one node, socket or NUMA domain
(with mpi4py), and for any processes of one machine (``Arena``, e.g. multiprocessing workers).

    from mpi4py import MPI
    import numpy as np
    import nodeshm

    rm = nodeshm.ResourceManager(MPI.COMM_WORLD)                        # collective
    a = rm.make_resource("SHARED::tables", size=512 << 20, scope="socket")   # collective
    x = a.allocate("halo", shape=(1024, 3), dtype=np.float64)   # same name, same memory
    t = a.get_or_init("eos", shape=(n,), dtype="f8", init=fill)  # rank 0 fills, all read
    a.comm.Barrier()

Blocks are bytes: the same name with the same byte size is the same memory whatever the dtype
(blocks made from C, Fortran or Rust can be read here); another byte size raises SizeMismatch.
Every array keeps what it needs alive: its block's reference (released when the last array or
view on it is garbage-collected, or at ``deallocate``) and the mapping (until the last array
goes, even after the allocator, the manager or ``MPI.Finalize``).
"""

from math import prod as _prod

import numpy as _np

from . import _native
from ._errors import (
    AlreadyExists,
    Binding,
    Corrupted,
    Error,
    Incompatible,
    InternalError,
    InvalidArgument,
    InvalidName,
    IoError,
    MpiError,
    MpiFinalized,
    NoSpaceInBacking,
    NotAnArena,
    NotHeld,
    OutOfSpace,
    Placement,
    SizeMismatch,
    Timeout,
    Unsupported,
    Untrusted,
)

__all__ = [
    "ResourceManager",
    "Allocator",
    "Arena",
    "Error",
    "AlreadyExists",
    "Binding",
    "Corrupted",
    "Incompatible",
    "InternalError",
    "InvalidArgument",
    "InvalidName",
    "IoError",
    "MpiError",
    "MpiFinalized",
    "NoSpaceInBacking",
    "NotAnArena",
    "NotHeld",
    "OutOfSpace",
    "Placement",
    "SizeMismatch",
    "Timeout",
    "Unsupported",
    "Untrusted",
]


class _View:
    """What an array is made from: a block's memory described to NumPy. It is the array's base,
    so the block (its reference and its mapping) lives as long as any array or view on it."""

    __slots__ = ("block", "__array_interface__")

    def __init__(self, block, shape, dtype):
        self.block = block
        self.__array_interface__ = {
            "version": 3,
            "shape": tuple(shape),
            "typestr": dtype.str,
            "descr": dtype.descr,
            "data": (block.address, bool(block.readonly)),
        }


def _shape_of(shape):
    if shape is None:
        return None
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(n) for n in shape)


def _array(block, shape, dtype):
    arr = _np.asarray(_View(block, shape, dtype))
    if block.readonly:
        arr.flags.writeable = False
    return arr


def _block_of(array):
    """The block behind an array returned by nodeshm (or a view of one)."""
    base = array
    for _ in range(64):
        if isinstance(base, _View):
            return base.block
        nxt = getattr(base, "base", None)
        if nxt is None:
            break
        base = nxt
    raise NotHeld("this array is not a nodeshm block (or a view of one)")


def _nbytes(shape, dtype):
    return _prod(shape) * dtype.itemsize


def _align(dtype):
    return max(64, dtype.alignment)


class _Blocks:
    """Named blocks as arrays: what allocators and arenas share."""

    def __init__(self, native):
        self._native = native

    def allocate(self, name, shape, dtype=_np.uint8):
        """A writable array on block ``name`` (zeroed when created here), the same memory in
        every process that asks for the same name and byte size. Independent (not collective).

        Raises SizeMismatch if the name exists with another byte size, OutOfSpace when the
        arena is full, InvalidName / InvalidArgument for a bad name or a size of 0."""
        dtype = _np.dtype(dtype)
        shape = _shape_of(shape)
        block = self._native.allocate(name, _nbytes(shape, dtype), _align(dtype))
        return _array(block, shape, dtype)

    def find(self, name, dtype=_np.uint8, shape=None):
        """An array on block ``name`` if it exists (taking a reference), else None. ``shape``
        defaults to 1-D over the whole block; a shape of another byte size raises SizeMismatch."""
        dtype = _np.dtype(dtype)
        block = self._native.find(name)
        if block is None:
            return None
        shape = _shape_of(shape)
        if shape is None:
            if block.nbytes % dtype.itemsize:
                block.release()
                raise SizeMismatch(
                    f"block {name!r} has {block.nbytes} bytes, not a whole number of "
                    f"{dtype} values ({dtype.itemsize} bytes)"
                )
            shape = (block.nbytes // dtype.itemsize,)
        elif _nbytes(shape, dtype) != block.nbytes:
            requested = _nbytes(shape, dtype)
            block.release()
            err = SizeMismatch(
                f"block {name!r} has {block.nbytes} bytes; shape {shape} of {dtype} is "
                f"{requested} bytes"
            )
            err.name, err.existing, err.requested, err.code = name, block.nbytes, requested, 3
            raise err
        return _array(block, shape, dtype)

    def deallocate(self, array):
        """Releases this process's reference to the block behind ``array`` now (the last
        reference anywhere frees the block). The array stays readable but must not be used."""
        self._native.deallocate(_block_of(array))

    def stats(self):
        """A dict: capacity, used, free, largest_free, live_blocks, requested, high_water,
        recoveries (bytes and counts)."""
        return self._native.stats()

    def entries(self):
        """A list of (name, offset, size, refcount) for every block."""
        return self._native.entries()

    def actual_size(self):
        """Bytes in use, block metadata included (Umpire's getActualSize)."""
        return self._native.actual_size()

    def coalesce(self):
        """Gives the blocks of removed small names, kept for the next name of their size (and
        counted as free), back to the heap, merged with their neighbours (Umpire's coalesce).
        Allocation does this by itself when a block does not fit otherwise."""
        self._native.coalesce()

    def lock(self):
        """The robust user lock, as a context manager (``with a.lock(): ...``); raises Timeout
        after the lock timeout. ``owner_died`` on the entered lock tells whether the previous
        holder died holding it."""
        return self._native.lock()


class Allocator(_Blocks):
    """A SHARED:: allocator: one arena per scope instance, shared by the ranks of ``comm``."""

    @property
    def name(self):
        """The allocator's name."""
        return self._native.name

    @property
    def comm(self):
        """The ranks sharing this arena, as an mpi4py communicator (rank 0 created it). Owned
        by the allocator: do not free it."""
        from mpi4py import MPI

        return MPI.Comm.f2py(self._native.comm_f)

    def get_or_init(self, name, shape, dtype, init):
        """Collective over ``comm``: rank 0 allocates the block and, if it is new, calls
        ``init(array)`` once with a writable array; then every rank gets a read-only array
        (``writeable=False``) on the same memory."""
        dtype = _np.dtype(dtype)
        shape = _shape_of(shape)

        def fill(view_block):
            init(_np.asarray(_View(view_block, shape, dtype)))

        block = self._native.get_or_init(name, _nbytes(shape, dtype), _align(dtype), fill)
        return _array(block, shape, dtype)

    @property
    def placement(self):
        """Where this rank's arena memory is, as the kernel reports it (text)."""
        return self._native.placement

    @property
    def shm_path(self):
        """The arena's path in its backing directory (unlinked once every rank attached, by
        default)."""
        return self._native.shm_path

    @property
    def scope_instance(self):
        """This rank's scope instance, e.g. "socket 1"."""
        return self._native.scope_instance


class ResourceManager:
    """Builds SHARED:: allocators over an mpi4py intracommunicator (collective over it)."""

    def __init__(self, comm):
        self._native = _native.ResourceManager(comm.py2f())

    def make_resource(
        self,
        name,
        size,
        scope="node",
        unlink="after_attach",
        mode=0o600,
        dir=None,
        numa="auto",
        huge_pages="never",
        prefault=False,
        attach_timeout=30.0,
        lock_timeout=30.0,
        expected_names=None,
    ):
        """Collective: allocator ``name`` ("SHARED::..."), one arena of ``size`` bytes per
        scope instance ("node", "socket" or "numa"). Every rank passes the same arguments and
        gets the same result; a failure raises the same error class on every rank."""
        return Allocator(
            self._native.make_resource(
                name,
                size,
                scope=scope,
                unlink=unlink,
                mode=mode,
                dir=None if dir is None else str(dir),
                numa=numa,
                huge_pages=huge_pages,
                prefault=prefault,
                attach_timeout=attach_timeout,
                lock_timeout=lock_timeout,
                expected_names=expected_names,
            )
        )

    def allocators(self):
        """Names of the allocators that exist (some handle is alive)."""
        return self._native.allocators()

    def get_allocator(self, name):
        """A new handle to allocator ``name``, or None. Local."""
        native = self._native.get_allocator(name)
        return None if native is None else Allocator(native)

    def remove_allocator(self, name):
        """Forgets ``name``; returns a handle if it still exists. Local."""
        native = self._native.remove_allocator(name)
        return None if native is None else Allocator(native)

    @property
    def job_token(self):
        """The random token in every shm name this manager makes."""
        return self._native.job_token


class Arena(_Blocks):
    """An arena without MPI: made by one process, attached by name by others (multiprocessing
    workers, tools). Killed attachers do not keep its name alive."""

    @staticmethod
    def create(
        name,
        size,
        unlink="on_last_detach",
        mode=0o600,
        dir=None,
        huge_pages="never",
        lock_timeout=30.0,
        expected_names=None,
    ):
        """Creates arena ``name`` of ``size`` bytes (its name is removed when the last live
        attacher detaches, by default; "never" keeps it)."""
        return Arena(
            _native.Arena.create(
                name,
                size,
                unlink=unlink,
                mode=mode,
                dir=None if dir is None else str(dir),
                huge_pages=huge_pages,
                lock_timeout=lock_timeout,
                expected_names=expected_names,
            )
        )

    @staticmethod
    def attach(name, timeout=30.0, dir=None, lock_timeout=30.0):
        """Attaches to arena ``name``, waiting up to ``timeout`` seconds for it."""
        return Arena(
            _native.Arena.attach(
                name, timeout=timeout, dir=None if dir is None else str(dir), lock_timeout=lock_timeout
            )
        )

    @property
    def path(self):
        """The arena's path."""
        return self._native.path

    @property
    def size(self):
        """The arena's size in bytes."""
        return self._native.size
