#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints, runs every test
# (unit, property, multi-process, MPI under mpirun, CLI, C/Fortran) and the quick benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The arena layer (and the command line) must build without MPI and hwloc.
cargo clippy --no-default-features --lib --bins -- -D warnings
cargo test --all-targets
# The benchmark's quick mode, so it keeps working (debug build: figures are not meaningful here
# and nothing is asserted about them; scripts/bench.sh measures for real).
cargo build --example bench
mpirun -n 4 --oversubscribe target/debug/examples/bench --quick \
    --json target/bench-quick.json --svg target/bench-quick.svg > target/bench-quick.txt
echo "benchmark quick mode ran: $(grep -c . target/bench-quick.txt) lines in target/bench-quick.txt"
leaks=$(ls /dev/shm | grep '^nodeshm' || true)
if [[ -n "$leaks" ]]; then
    echo "tests left shared memory behind in /dev/shm:" >&2
    echo "$leaks" >&2
    exit 1
fi
