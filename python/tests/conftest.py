"""Shared helpers: the repository root, this run's name marker, and running MPI jobs through
scripts/mpi-launch.sh (Open MPI or MPICH, mpirun or srun, as NODESHM_MPI / NODESHM_LAUNCHER say)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Every shm name this run makes carries the marker (the manager adds NODESHM_NAME_TAG), so leak
# checks look at this run's names only.
MARKER = os.environ.setdefault("NODESHM_NAME_TAG", f"py{os.getpid()}")


def leftovers(marker=MARKER):
    """Names of ours left in /dev/shm that contain `marker`."""
    assert marker
    return [n for n in os.listdir("/dev/shm") if n.startswith("nodeshm") and marker in n]


def mpi_job(np_, role, *args, bind=None, env=None, timeout=120):
    """Runs `np_` ranks of tests/mpi_roles.py playing `role`; returns (exit code, output)."""
    cmd = ["bash", str(ROOT / "scripts/mpi-launch.sh"), "-n", str(np_)]
    if bind:
        cmd += ["--bind", bind]
    for k, v in (env or {}).items():
        cmd += ["--env", f"{k}={v}"]
    mpi = os.environ.get("NODESHM_MPI", "openmpi")
    cmd += ["--env", f"NODESHM_NAME_TAG={MARKER}", "--env", f"NODESHM_MPI={mpi}", "--", sys.executable,
            str(Path(__file__).with_name("mpi_roles.py")), role, *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             start_new_session=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{role} on {np_} ranks timed out:\n{e.stdout}{e.stderr}")
    return out.returncode, out.stdout + out.stderr


def expect_ok(np_, role, *args, **kw):
    code, text = mpi_job(np_, role, *args, **kw)
    oks = [l for l in text.splitlines() if l.startswith("ok rank")]
    assert code == 0 and len(oks) == np_, f"exit {code}, {len(oks)} of {np_} ranks ok:\n{text}"
    return text


def is_root():
    return os.geteuid() == 0
