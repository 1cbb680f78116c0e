#!/usr/bin/env bash
# Runs the full benchmark (release build) on 4 ranks, as for the README's Performance section:
# writes target/bench.json, target/bench.svg and prints the tables. As root it mounts a small
# tmpfs with huge=always and a hugetlbfs (raising nr_hugepages by what 1 GiB needs) for the
# huge-page comparisons, and restores both afterwards.
# Then the named case with 2 ranks bound one per core (target/bench-2.json) and the
# contention case with 8 ranks (target/bench-8.json). The named case runs 3 times in each job
# for the stability target (--named-runs).
# Usage: scripts/bench.sh [-n RANKS] [--quick] [--only CASE]   (NODESHM_MPI / NODESHM_LAUNCHER: scripts/mpi-launch.sh)
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
# The Boost.Interprocess peer (header-only Boost from libboost-dev), run inside the same job.
mkdir -p "$CARGO_TARGET_DIR"
g++ -O2 -std=c++17 examples/bench/boost_peer.cpp -o "$CARGO_TARGET_DIR/boost_peer" -lrt -pthread
huge=()
if [[ $(id -u) -eq 0 ]]; then
    dir=$(mktemp -d /tmp/nodeshm-bench-huge.XXXXXX)
    tlb=$(mktemp -d /tmp/nodeshm-bench-hugetlb.XXXXXX)
    pages=/proc/sys/vm/nr_hugepages
    before=$(cat "$pages")
    cleanup() {
        umount "$dir" 2>/dev/null; rmdir "$dir"
        umount "$tlb" 2>/dev/null; rmdir "$tlb"
        echo "$before" > "$pages"
    }
    trap cleanup EXIT
    mount -t tmpfs -o size=3g,huge=always nodeshm-bench "$dir"
    huge=(--huge-dir "$dir")
    # 1 GiB of 2 MiB pages, plus a few for the header pages of the smaller cases.
    echo $((before + 520)) > "$pages"
    if (( $(cat "$pages") >= before + 520 )) && mount -t hugetlbfs -o pagesize=2M nodeshm-bench "$tlb"; then
        huge+=(--hugetlb-dir "$tlb")
    else
        echo "bench: could not reserve 520 huge pages; hugetlbfs row left out" >&2
    fi
fi
scripts/mpi-launch.sh -n "$ranks" -- "$CARGO_TARGET_DIR/release/examples/bench" "${huge[@]}" \
    --boost "$CARGO_TARGET_DIR/boost_peer" --named-runs 3 --json target/bench.json --svg target/bench.svg "${args[@]}"
# Contention beyond the cores: 8 ranks on this machine (--only contention; its own JSON).
# And the named case with 2 ranks, one per core (not oversubscribed; its own JSON): the
# targets speak of 2 and 4 ranks on the same names.
if [[ " ${args[*]} " != *" --only "* ]]; then
    scripts/mpi-launch.sh -n 2 --bind core -- "$CARGO_TARGET_DIR/release/examples/bench" --only named \
        --boost "$CARGO_TARGET_DIR/boost_peer" --named-runs 3 --json target/bench-2.json "${args[@]}"
    scripts/mpi-launch.sh -n 8 -- "$CARGO_TARGET_DIR/release/examples/bench" --only contention \
        --json target/bench-8.json "${args[@]}"
fi
