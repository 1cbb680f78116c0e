#!/usr/bin/env bash
# Runs the full benchmark (release build) on 4 ranks, as for the README's Performance section:
# writes target/bench.json, target/bench.svg and prints the tables. As root it mounts a small
# tmpfs with huge=always for the huge-page comparison and unmounts it afterwards.
# Usage: scripts/bench.sh [-n RANKS] [--quick]   (NODESHM_MPI / NODESHM_LAUNCHER: scripts/mpi-launch.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ranks=4
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -n) ranks=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
source scripts/mpi-env.sh
cargo build --release --example bench
huge=()
if [[ $(id -u) -eq 0 ]]; then
    dir=$(mktemp -d /tmp/nodeshm-bench-huge.XXXXXX)
    mount -t tmpfs -o size=3g,huge=always nodeshm-bench "$dir"
    trap 'umount "$dir"; rmdir "$dir"' EXIT
    huge=(--huge-dir "$dir")
fi
scripts/mpi-launch.sh -n "$ranks" -- "$CARGO_TARGET_DIR/release/examples/bench" "${huge[@]}" \
    --json target/bench.json --svg target/bench.svg "${args[@]}"
