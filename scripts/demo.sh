#!/usr/bin/env bash
# The main demo: 4 MPI ranks share one 256 MiB table per node (examples/node_table.rs) and the
# node's memory use is compared with one copy per rank. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --example node_table --example cookbook
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -n 4 --oversubscribe target/release/examples/cookbook
mpirun -n 4 --oversubscribe target/release/examples/node_table "$@"
