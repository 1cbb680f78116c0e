#!/usr/bin/env bash
# Makes (or reuses) the Python environment of the tests for the MPI that NODESHM_MPI names:
# a venv in $CARGO_TARGET_DIR/pyenv with numpy, pytest and mpi4py built from source against that
# MPI (the $MPICC wrapper), then `pip install ./python` (the nodeshm package, built by maturin
# against the same MPI). Prints the venv's python.
#
#   py=$(scripts/python-env.sh) && "$py" -m pytest python/tests
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/mpi-env.sh
venv=$CARGO_TARGET_DIR/pyenv
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends python3-venv >&2
fi
[[ -x $venv/bin/python ]] || python3 -m venv "$venv" >&2
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
"$venv/bin/python" -c 'import numpy, pytest' 2>/dev/null || "${pip[@]}" install numpy pytest >&2
# mpi4py from source: its binary wheels pick an MPI at run time, which must be the one nodeshm
# links, so it is built with the same compiler wrapper (and never from pip's wheel cache, which
# may hold a build against the other MPI).
"$venv/bin/python" -c 'import mpi4py' 2>/dev/null \
    || MPICC=$MPICC "${pip[@]}" install --no-cache-dir --no-binary mpi4py mpi4py >&2
start=$SECONDS
"${pip[@]}" install --force-reinstall --no-deps ./python >&2
echo "python-env: nodeshm built and installed into $venv in $((SECONDS - start)) s" >&2
echo "$venv/bin/python"
