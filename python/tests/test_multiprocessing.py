"""nodeshm.Arena with multiprocessing (spawn): workers attach by name, a killed worker neither
blocks the others nor keeps the name, and nothing is left behind or warned about."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import nodeshm
from conftest import MARKER, leftovers

N = 1 << 16
WORKERS = 4


def unique(tag):
    return f"nodeshm-py-{MARKER}-{os.getpid()}-{tag}"


def fill_part(name, index):
    arena = nodeshm.Arena.attach(name, timeout=10.0)
    data = arena.allocate("data", shape=(N,), dtype=np.int64)
    part = N // WORKERS
    data[index * part:(index + 1) * part] = np.arange(part) + index * part
    with arena.lock():
        count = arena.allocate("count", shape=(1,), dtype=np.int64)
        count[0] += 1


def test_workers_fill_disjoint_parts():
    name = unique("fill")
    arena = nodeshm.Arena.create(name, size=4 << 20)
    data = arena.allocate("data", shape=(N,), dtype=np.int64)
    count = arena.allocate("count", shape=(1,), dtype=np.int64)
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=fill_part, args=(name, i)) for i in range(WORKERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert (data == np.arange(N)).all()
    assert count[0] == WORKERS
    del data, count, arena
    assert not leftovers(name)


def hold_lock_forever(name, ready):
    arena = nodeshm.Arena.attach(name, timeout=10.0)
    lock = arena.lock()
    lock.__enter__()
    ready.set()
    time.sleep(600)


def take_lock(name, result):
    arena = nodeshm.Arena.attach(name, timeout=10.0)
    with arena.lock() as held:
        result.put(held.owner_died)


def test_worker_killed_holding_the_lock_blocks_nobody():
    name = unique("lock")
    arena = nodeshm.Arena.create(name, size=1 << 20, lock_timeout=10.0)
    ctx = mp.get_context("spawn")
    ready, result = ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=hold_lock_forever, args=(name, ready))
    holder.start()
    assert ready.wait(30)
    try:
        with nodeshm.Arena.attach(name, lock_timeout=0.2).lock():
            raise AssertionError("the lock was free while held")
    except nodeshm.Timeout as e:
        assert e.code == 6 and e.waited > 0.1
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    taker = ctx.Process(target=take_lock, args=(name, result))
    taker.start()
    assert result.get(timeout=30) is True, "the next holder learns the previous one died"
    taker.join(30)
    assert taker.exitcode == 0
    del arena
    assert not leftovers(name), "the killed worker kept the name alive"


SCRIPT = """
import multiprocessing as mp, sys, numpy as np, nodeshm
sys.path.insert(0, {tests!r})
import test_multiprocessing as t
if __name__ == "__main__":
    name = t.unique("tracker")
    arena = nodeshm.Arena.create(name, size=1 << 20)
    data = arena.allocate("data", shape=(t.N,), dtype=np.int64)
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=t.fill_part, args=(name, i)) for i in range(t.WORKERS)]
    [p.start() for p in ps]
    [p.join() for p in ps]
    assert (data == np.arange(t.N)).all()
    print("done")
"""


def test_no_resource_tracker_warnings():
    tests = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests)], capture_output=True,
                         text=True, timeout=120, cwd=tests)
    assert out.returncode == 0 and "done" in out.stdout, out.stdout + out.stderr
    assert "resource_tracker" not in out.stderr and "Warning" not in out.stderr, out.stderr
    assert not leftovers()


def test_errors_are_typed():
    name = unique("errors")
    arena = nodeshm.Arena.create(name, size=1 << 20)
    a = arena.allocate("a", shape=(8,), dtype=np.float64)  # held while `a` lives
    try:
        arena.allocate("a", shape=(9,), dtype=np.float64)
        raise AssertionError("no SizeMismatch")
    except nodeshm.SizeMismatch as e:
        assert (e.existing, e.requested) == (64, 72)
    try:
        nodeshm.Arena.attach(unique("missing"), timeout=0.05)
        raise AssertionError("no Timeout")
    except nodeshm.Timeout:
        pass
    try:
        arena.allocate("", shape=(1,))
        raise AssertionError("no InvalidName")
    except nodeshm.InvalidName as e:
        assert isinstance(e, ValueError) and e.code == 2
    assert arena.find("a", dtype=np.float64).shape == (8,)
    del a, arena
    assert not leftovers(name)
