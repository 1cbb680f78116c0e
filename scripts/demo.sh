#!/usr/bin/env bash
# The main demo: 4 MPI ranks share one 256 MiB table per node (examples/node_table.rs) and the
# node's memory use is compared with one copy per rank. Installs what is missing first.
# NODESHM_MPI=mpich and/or NODESHM_LAUNCHER=srun run it on MPICH or under Slurm (see
# scripts/mpi-launch.sh; srun needs a running Slurm).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/mpi-env.sh
cargo build --release --example node_table --example cookbook
scripts/mpi-launch.sh -n 4 -- "$CARGO_TARGET_DIR/release/examples/cookbook"
scripts/mpi-launch.sh -n 4 -- "$CARGO_TARGET_DIR/release/examples/node_table" "$@"
