"""One read-only NumPy table per node instead of one per rank: rank 0 of the node fills a
table in a node-scoped allocator, every rank reads all of it, and the node's memory use (the sum
of every rank's Pss from /proc/self/smaps_rollup) is compared with each rank keeping its own copy.

    mpirun -n 4 python examples/python/node_table.py [--mib 256]
"""

import argparse

import numpy as np
from mpi4py import MPI

import nodeshm


def pss_bytes():
    """This process's proportional set size (shared pages divided among their mappers)."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def fill(table):
    # A block at a time: whole-table temporaries would count in the Pss being compared.
    pattern = np.arange(1000) * 0.25
    for start in range(0, table.size, pattern.size):
        block = table[start:start + pattern.size]
        block[:] = pattern[:block.size]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    mib = parser.parse_args().mib
    n = mib * (1 << 20) // 8
    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    rm = nodeshm.ResourceManager(world)
    # Before make_resource: each rank maps its share of the pages while reserving it, and that
    # share is part of what the table costs the node.
    baseline = pss_bytes()
    alloc = rm.make_resource("SHARED::tables", size=(mib + 1) << 20)
    table = alloc.get_or_init("eos", shape=(n,), dtype=np.float64, init=fill)
    shared_sum = float(table[::512].sum())
    node.Barrier()  # Pss divides shared pages among the ranks that map them: measure once all do
    node_shared = node.allreduce(pss_bytes() - baseline)
    del table

    baseline = pss_bytes()
    private = np.empty(n)
    fill(private)
    private_sum = float(private[::512].sum())
    node_private = node.allreduce(pss_bytes() - baseline)
    del private

    assert shared_sum == private_sum, "the shared table holds what rank 0 wrote"
    if node.Get_rank() == 0:
        gib = 1 << 30
        print(f"node table of {mib} MiB read by {node.Get_size()} ranks on this node (Python):")
        print(f"  one copy per rank : {node_private / gib:7.3f} GiB of Pss")
        print(f"  nodeshm (one copy): {node_shared / gib:7.3f} GiB of Pss")
        print(f"  ratio             : {node_shared / max(node_private, 1):7.3f} "
              f"(ideal 1/{node.Get_size()} = {1 / node.Get_size():.3f})")
    node.Free()


if __name__ == "__main__":
    main()
