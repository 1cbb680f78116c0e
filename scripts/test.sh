#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints, runs every test
# (unit, property, multi-process, CLI, MPI, C/Fortran) under Open MPI, then the MPI tests under
# MPICH, then both again under Slurm's srun on a throwaway local Slurm, and the quick benchmark.
#
# NODESHM_TEST_SRUN=0 leaves out the srun set (it needs root to start Slurm; without root it is
# left out with a message).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Every shm name this run makes carries this marker (the manager adds NODESHM_NAME_TAG to its
# names; the tests put it in theirs): the leak check looks at this run's names only, so another
# job's arenas on the node neither fail nor hide anything.
export NODESHM_NAME_TAG=${NODESHM_NAME_TAG:-run$$}

section_start=$SECONDS
section() {
    echo "== [$((SECONDS - section_start)) s] $*"
}

section "format and lints (Open MPI)"
(
    source scripts/mpi-env.sh
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    # The arena layer (and the command line) must build without MPI and hwloc.
    cargo clippy -p nodeshm -p nodeshm-cli --no-default-features --lib --bins -- -D warnings
    # The crate docs build without a warning (missing docs, broken links).
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p nodeshm
    # A library user compiles only what the library needs: no command-line crates.
    if cargo tree -p nodeshm -e normal | grep -E ' (clap|serde_json) '; then
        echo "the library depends on command-line crates" >&2
        exit 1
    fi
)

# The main demo's claim, checked on its output (examples/node_table.rs and its Python twin):
# the node holds one copy, node Pss about 1/4 of four private copies. A missing share, or a
# copy per rank, lands far from it.
check_one_copy() {
    local out ratio
    out=$("$@")
    echo "$out"
    ratio=$(awk '/ratio/ { print $3 }' <<<"$out")
    awk -v r="$ratio" 'BEGIN { exit !(r > 0.15 && r < 0.35) }' || {
        echo "$*: node Pss ratio '$ratio', expected about 0.25 (one copy per node)" >&2
        return 1
    }
}

section "every test under Open MPI + mpirun"
(
    source scripts/mpi-env.sh
    cargo test --workspace --all-targets
    cargo test --workspace --doc
    # cargo test leaves examples under hashed names only.
    cargo build --example node_table
    check_one_copy scripts/mpi-launch.sh -n 4 -- "$CARGO_TARGET_DIR/debug/examples/node_table" --mib 64
)

section "lints and MPI tests under MPICH + mpirun (target/mpich)"
(
    export NODESHM_MPI=mpich
    source scripts/mpi-env.sh
    cargo clippy --all-targets -- -D warnings
    cargo test --test mpi --test capi
)

if [[ ${NODESHM_TEST_SRUN:-1} == 0 ]]; then
    section "srun set left out (NODESHM_TEST_SRUN=0)"
elif [[ $(id -u) -ne 0 ]]; then
    section "srun set left out: starting a local Slurm needs root"
else
    section "MPI tests under srun (Open MPI --mpi=pmix, MPICH --mpi=pmi2) on a local Slurm"
    tests/tools/slurm-local.sh start
    trap 'tests/tools/slurm-local.sh stop' EXIT
    for impl in openmpi mpich; do
        (
            export NODESHM_MPI=$impl NODESHM_LAUNCHER=srun
            source scripts/mpi-env.sh
            cargo test --test mpi --test capi
        )
    done
    tests/tools/slurm-local.sh stop
    trap - EXIT
fi

# The Python package, built against each MPI with mpi4py built against the same one: pytest
# (MPI jobs of 1, 2 and 4 ranks, multiprocessing), the example and the benchmark's short run.
for impl in openmpi mpich; do
    section "Python package and tests ($impl)"
    (
        export NODESHM_MPI=$impl
        source scripts/mpi-env.sh
        py=$(scripts/python-env.sh)
        "$py" -m pytest -q python/tests
        check_one_copy scripts/mpi-launch.sh -n 4 -- "$py" examples/python/node_table.py --mib 16
        scripts/mpi-launch.sh -n 2 -- "$py" examples/python/bench.py -n 200 > "$CARGO_TARGET_DIR/python-bench.txt"
        echo "python benchmark ran: $(grep -c . "$CARGO_TARGET_DIR/python-bench.txt") lines"
    )
done

# The benchmark's quick mode, so it keeps working (debug build: figures are not meaningful here
# and nothing is asserted about them; scripts/bench.sh measures for real).
for impl in openmpi mpich; do
    section "benchmark quick mode ($impl)"
    (
        export NODESHM_MPI=$impl
        source scripts/mpi-env.sh
        cargo build --example bench
        g++ -O2 -std=c++17 examples/bench/boost_peer.cpp -o "$CARGO_TARGET_DIR/boost_peer" -lrt -pthread
        scripts/mpi-launch.sh -n 4 -- "$CARGO_TARGET_DIR/debug/examples/bench" --quick \
            --boost "$CARGO_TARGET_DIR/boost_peer" --named-runs 2 \
            --json "target/bench-quick-$impl.json" --svg "target/bench-quick-$impl.svg" \
            > "target/bench-quick-$impl.txt"
        echo "benchmark quick mode ran: $(grep -c . "target/bench-quick-$impl.txt") lines in target/bench-quick-$impl.txt"
    )
done

section "leak check (names marked $NODESHM_NAME_TAG)"
leaks=$(ls /dev/shm | grep '^nodeshm' | grep -F "$NODESHM_NAME_TAG" || true)
if [[ -n "$leaks" ]]; then
    echo "tests left shared memory behind in /dev/shm:" >&2
    echo "$leaks" >&2
    exit 1
fi
section "all done"
