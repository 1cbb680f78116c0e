"""Roles played by every rank of the MPI jobs that tests/test_mpi.py launches:
`python mpi_roles.py ROLE [ARG]`. Each rank prints "ok rank N ..." when all its checks passed."""

import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

import nodeshm

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()


def ok(*what):
    # One write per line: print() writes the text and the newline separately, and the launcher
    # would interleave lines of different ranks.
    sys.stdout.write(" ".join([f"ok rank {rank}", *map(str, what)]) + "\n")
    sys.stdout.flush()


def basic():
    # mpi4py and nodeshm must use the MPI the test run is for (mpi4py built against it).
    family = {"openmpi": "Open MPI", "mpich": "MPICH"}[os.environ.get("NODESHM_MPI", "openmpi")]
    assert family in MPI.Get_library_version(), MPI.Get_library_version()
    rm = nodeshm.ResourceManager(world)
    a = rm.make_resource("SHARED::py", size=8 << 20)
    comm = a.comm
    assert (comm.Get_size(), comm.Get_rank()) == (size, rank), "one node: the allocator spans all"
    assert rm.allocators() == ["SHARED::py"]
    assert rm.get_allocator("SHARED::py") is not None and rm.get_allocator("SHARED::x") is None

    # Same name, same memory: rank 0 writes with NumPy, every rank reads.
    x = a.allocate("halo", shape=(1024, 3), dtype=np.float64)
    assert x.shape == (1024, 3) and x.dtype == np.float64 and x.flags.writeable
    if rank == 0:
        x[:] = np.arange(3072, dtype=np.float64).reshape(1024, 3)
    comm.Barrier()
    assert x.sum() == 3071 * 3072 / 2, x.sum()
    # Blocks are bytes: the same block as another dtype, found by name.
    y = a.find("halo", dtype=np.uint8)
    assert y is not None and y.nbytes == x.nbytes
    assert a.find("halo", dtype=np.float64, shape=(1024, 3))[5, 1] == 16.0
    assert a.find("missing") is None
    a.deallocate(y)
    # Every rank writes its own row of a shared table.
    rows = a.allocate("rows", shape=(size, 4), dtype=np.int64)
    rows[rank, :] = rank + 1
    comm.Barrier()
    assert (rows[:, 0] == np.arange(1, size + 1)).all()

    # get_or_init: filled once by rank 0, read-only everywhere.
    calls = []

    def fill(arr):
        calls.append(1)
        arr[:] = np.linspace(0.0, 1.0, arr.size)

    t = a.get_or_init("eos", shape=(1000,), dtype="f8", init=fill)
    assert len(calls) == (1 if rank == 0 else 0), calls
    assert not t.flags.writeable
    try:
        t[0] = 5.0
        raise AssertionError("a get_or_init table was writable")
    except ValueError:
        pass
    assert abs(t[-1] - 1.0) < 1e-12
    t2 = a.get_or_init("eos", shape=(1000,), dtype="f8", init=fill)
    assert len(calls) == (1 if rank == 0 else 0) and t2[500] == t[500]

    # An init that raises: every rank gets the error, nothing is left half-made.
    def broken(arr):
        raise RuntimeError("no table today")

    try:
        a.get_or_init("broken", shape=(10,), dtype="f8", init=broken)
        raise AssertionError("no error from a raising init")
    except nodeshm.InvalidArgument as e:
        assert "no table today" in str(e) and e.rank == 0, vars(e)
    assert a.find("broken") is None

    # Typed errors with their fields.
    try:
        a.allocate("halo", shape=(10,), dtype=np.float64)
        raise AssertionError("no SizeMismatch")
    except nodeshm.SizeMismatch as e:
        assert (e.existing, e.requested, e.code) == (1024 * 3 * 8, 80, 3), vars(e)
    try:
        a.allocate(f"too-big-{rank}", shape=(9 << 20,), dtype=np.uint8)
        raise AssertionError("no OutOfSpace")
    except nodeshm.OutOfSpace as e:
        assert e.capacity < 8 << 20 and e.requested > e.largest_free, vars(e)
    # A collective failure: the same class on every rank, with the failing rank.
    try:
        rm.make_resource("no-prefix", size=1 << 20)
        raise AssertionError("no InvalidName")
    except nodeshm.InvalidName as e:
        assert e.rank == 0 and e.code == 2, vars(e)
    try:
        rm.make_resource("SHARED::py", size=1 << 20)
        raise AssertionError("no AlreadyExists")
    except nodeshm.AlreadyExists:
        pass

    # The user lock serialises a read-modify-write across ranks.
    counter = a.allocate("counter", shape=(1,), dtype=np.int64)
    for _ in range(50):
        with a.lock() as held:
            assert not held.owner_died
            counter[0] += 1
    comm.Barrier()
    assert counter[0] == 50 * size, counter[0]
    st = a.stats()
    assert st["live_blocks"] >= 4 and st["used"] == a.actual_size(), st
    # A removed small block is kept for reuse but counted as free; coalesce gives it back.
    comm.Barrier()
    if rank == 0:
        used = a.stats()["used"]
        a.deallocate(a.allocate("scratch", shape=(8,), dtype=np.int64))
        assert a.stats()["used"] == used, (a.stats(), used)
        a.coalesce()
        assert a.stats()["used"] == used, (a.stats(), used)
    comm.Barrier()
    names = {e[0] for e in a.entries()}
    assert {"halo", "rows", "eos", "counter"} <= names, names
    assert a.scope_instance == "node 0" and "numa_asked" in a.placement
    comm.Barrier()
    ok()


def scoped():
    rm = nodeshm.ResourceManager(world)
    a = rm.make_resource("SHARED::scoped", size=4 << 20, scope="socket")
    comm = a.comm
    assert comm.Get_size() == 2, comm.Get_size()
    v = a.allocate("x", shape=(1,), dtype=np.int64)
    instance = a.scope_instance
    if comm.Get_rank() == 0:
        v[0] = 100 + int(instance.split()[1])
    world.Barrier()
    assert v[0] == 100 + int(instance.split()[1]), (v[0], instance)
    instances = world.allgather(instance)
    assert sorted(instances) == ["socket 0", "socket 0", "socket 1", "socket 1"], instances
    ok(instance)


def full(dir):
    rm = nodeshm.ResourceManager(world)
    try:
        rm.make_resource("SHARED::full", size=64 << 20, dir=dir)
        raise AssertionError("no NoSpaceInBacking")
    except nodeshm.NoSpaceInBacking as e:
        assert e.requested == 64 << 20 and e.available <= 16 << 20 and e.dir == dir, vars(e)
        assert e.rank == 0, vars(e)
    ok()


def killed():
    rm = nodeshm.ResourceManager(world)
    a = rm.make_resource("SHARED::killed", size=4 << 20)
    keep = a.allocate("held", shape=(1 << 20,))
    ok(f"token {rm.job_token:016x}")
    world.Barrier()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
    del keep


LATE = []


def outlive():
    rm = nodeshm.ResourceManager(world)
    a = rm.make_resource("SHARED::outlive", size=4 << 20)
    x = a.allocate("kept", shape=(100,), dtype=np.int32)
    x[:] = rank
    t = a.get_or_init("table", shape=(10,), dtype=np.int32, init=lambda arr: arr.fill(7))
    view = x[10:20]
    a.comm.Barrier()
    LATE.extend([x, t, view])
    del a, rm, x, t, view  # allocator and manager go; the arrays stay usable
    world.Barrier()
    assert LATE[1].sum() == 70 and LATE[2].shape == (10,)
    MPI.Finalize()
    # After MPI_Finalize: the mapping is still there, reading and dropping do not crash.
    assert LATE[1][3] == 7
    LATE.clear()
    ok("after finalize")


if __name__ == "__main__":
    role = sys.argv[1]
    args = sys.argv[2:]
    {"basic": basic, "scoped": scoped, "full": full, "killed": killed, "outlive": outlive}[role](*args)
