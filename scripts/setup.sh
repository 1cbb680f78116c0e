#!/usr/bin/env bash
# Installs what nodeshm needs on Debian 12 when it is missing: Open MPI (the library and mpirun),
# MPICH (the second MPI the tests run under; Debian keeps both side by side), Slurm with munge and
# PMIx (the srun tests start a throwaway local Slurm),
# hwloc (topology and memory binding), libclang (rsmpi generates its MPI bindings with bindgen),
# libudev and pkg-config (hwloc's and rsmpi's build scripts), cmake and gfortran (the C/Fortran
# package and its examples), util-linux (unshare, for the multi-node tests), Boost headers (the
# benchmark builds a Boost.Interprocess peer).
set -euo pipefail
packages=(libopenmpi-dev openmpi-bin mpich libmpich-dev libhwloc-dev hwloc libclang-dev libudev-dev
          pkg-config cmake gfortran g++ util-linux slurm-wlm munge libpmix-dev libboost-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
