"""nodeshm from mpi4py: every test launches real MPI jobs of tests/mpi_roles.py."""

import subprocess
import tempfile

import pytest

from conftest import ROOT, expect_ok, is_root, leftovers, mpi_job


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_same_name_same_memory_get_or_init_errors_and_lock(ranks):
    expect_ok(ranks, "basic")


def test_socket_scope_on_two_fake_packages():
    xml = ROOT / "tests/topologies/two-packages.xml"
    text = expect_ok(4, "scoped", bind="core",
                     env={"HWLOC_XMLFILE": xml, "HWLOC_THISSYSTEM": "1"})
    assert text.count("socket 0") == 2 and text.count("socket 1") == 2, text


@pytest.mark.skipif(not is_root(), reason="needs root (mounts a 16 MiB tmpfs)")
def test_tiny_tmpfs_raises_the_same_typed_error_everywhere():
    with tempfile.TemporaryDirectory(prefix="nodeshm-py-tmpfs-") as d:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=1777", "nodeshm-py", d],
                       check=True)
        try:
            expect_ok(4, "full", d)
        finally:
            subprocess.run(["umount", d], check=False)


def test_killed_rank_leaves_nothing():
    code, text = mpi_job(4, "killed")
    assert code != 0, f"the job should fail when a rank is killed:\n{text}"
    tokens = {l.split("token ")[1].strip() for l in text.splitlines() if "token " in l}
    assert tokens, text
    for token in tokens:
        assert not leftovers(token), leftovers(token)


def test_arrays_outlive_allocator_manager_and_finalize():
    expect_ok(2, "outlive")


def test_nothing_left_in_dev_shm():
    assert not leftovers()
