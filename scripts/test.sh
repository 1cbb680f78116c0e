#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints, runs every test
# (unit, property, multi-process, MPI under mpirun, CLI, C/Fortran) and the quick benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
leaks=$(ls /dev/shm | grep '^nodeshm' || true)
if [[ -n "$leaks" ]]; then
    echo "tests left shared memory behind in /dev/shm:" >&2
    echo "$leaks" >&2
    exit 1
fi
