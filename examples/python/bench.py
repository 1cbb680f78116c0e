"""Named shared arrays from Python, three ways, in one run (mpirun -n P python bench.py):

- nodeshm: `allocate` of a new name (every rank, independent), `find` of an existing one, and
  the release of an array;
- MPI-3 shared windows as mpi4py users write them: `MPI.Win.Allocate_shared` + `Shared_query` +
  `np.ndarray(buffer=...)` for every array (collective), and `Win.Free`;
- `multiprocessing.shared_memory`: `SharedMemory(create=True)` + ndarray, attaching by name,
  `close` + `unlink`.

Prints a table (median and p99 in microseconds per array) and writes JSON with --json.
"""

import argparse
import json
import os
import time
from multiprocessing import shared_memory

import numpy as np
from mpi4py import MPI

import nodeshm

world = MPI.COMM_WORLD
rank = world.Get_rank()


def stats(samples):
    s = np.sort(np.asarray(samples) * 1e6)
    return {"median_us": float(np.median(s)), "p99_us": float(s[int(0.99 * (len(s) - 1))])}


def timed(fn, n):
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2000, help="arrays per case")
    p.add_argument("--bytes", type=int, default=4096, help="bytes per array")
    p.add_argument("--json")
    args = p.parse_args()
    n, nbytes = args.n, args.bytes
    count = nbytes // 8
    results = {}

    # nodeshm: every rank allocates the same new names (the first creates, the others map).
    rm = nodeshm.ResourceManager(world)
    a = rm.make_resource("SHARED::bench", size=max(64 << 20, 4 * n * (nbytes + 512)))
    keep = []
    world.Barrier()
    results["nodeshm allocate (new name)"] = stats(
        timed(lambda i: keep.append(a.allocate(f"a{i}", shape=(count,), dtype=np.float64)), n))
    world.Barrier()
    found = []
    results["nodeshm find (existing name)"] = stats(
        timed(lambda i: found.append(a.find(f"a{i}", dtype=np.float64)), n))
    results["nodeshm release (deallocate)"] = stats(timed(lambda i: a.deallocate(found[i]), n))
    keep.clear()
    found.clear()
    world.Barrier()

    # MPI-3 shared windows: one collective window per array.
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    wins = []

    def window(i):
        win = MPI.Win.Allocate_shared(nbytes if node.Get_rank() == 0 else 0, 8, comm=node)
        buf, _ = win.Shared_query(0)
        wins.append((win, np.ndarray(buffer=buf, dtype=np.float64, shape=(count,))))

    m = min(n, 500)  # windows are slow and limited in number
    results["MPI.Win.Allocate_shared + Shared_query"] = stats(timed(window, m))
    results["MPI.Win.Free"] = stats(timed(lambda i: wins[i][0].Free(), m))
    wins.clear()
    node.Free()

    # multiprocessing.shared_memory on rank 0 (no MPI involved).
    if rank == 0:
        made = []

        def create(i):
            shm = shared_memory.SharedMemory(create=True, size=nbytes)
            made.append((shm, np.ndarray((count,), dtype=np.float64, buffer=shm.buf)))

        results["shared_memory create"] = stats(timed(create, n))
        attached = []

        def attach(i):
            shm = shared_memory.SharedMemory(name=made[i][0].name)
            attached.append((shm, np.ndarray((count,), dtype=np.float64, buffer=shm.buf)))

        results["shared_memory attach (by name)"] = stats(timed(attach, n))

        # Attached copies close; the creator's unlink also unregisters the name from the
        # resource tracker (which Python 3.11 registered again on attach: a set, so once).
        attached_shms = [shm for shm, _ in attached]
        attached.clear()
        for shm in attached_shms:
            shm.close()
        made_shms = [shm for shm, _ in made]
        made.clear()
        results["shared_memory close + unlink"] = stats(timed(lambda i: (made_shms[i].close(), made_shms[i].unlink()), n))

    if rank == 0:
        ranks = world.Get_size()
        print(f"named shared arrays of {nbytes} bytes, {ranks} ranks, {n} arrays per case "
              f"(median / p99 in microseconds per array)")
        for k, v in results.items():
            print(f"  {k:42s} {v['median_us']:10.2f} {v['p99_us']:10.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ranks": ranks, "bytes": nbytes, "arrays": n, "results": results,
                           "mpi": MPI.Get_library_version().strip().splitlines()[0]}, f, indent=1)


if __name__ == "__main__":
    main()
