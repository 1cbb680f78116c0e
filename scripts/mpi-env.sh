# Sourced by the scripts (and usable by hand: `source scripts/mpi-env.sh`): picks the MPI that
# nodeshm is built against and run with, from NODESHM_MPI (openmpi, the default, or mpich).
#
#   MPICC             the MPI C compiler wrapper; rsmpi's build script reads it (`mpicc -show`)
#   MPICXX            the MPI C++ wrapper, for the C++ example
#   MPIFC             the MPI Fortran wrapper, for the CMake package's Fortran module and tests
#   CARGO_TARGET_DIR  target (Open MPI) or target/mpich: a library built against one MPI must
#                     never be linked or run with the other, so each gets its own build
#
# Debian installs both MPIs side by side with suffixed wrappers (mpicc.openmpi, mpicc.mpich);
# elsewhere the plain names are used. NODESHM_LAUNCHER (mpirun or srun) is read by
# scripts/mpi-launch.sh.
# Absolute, so that builds run from another directory (maturin builds python/) share it.
nodeshm_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODESHM_MPI=${NODESHM_MPI:-openmpi}
NODESHM_LAUNCHER=${NODESHM_LAUNCHER:-mpirun}
export NODESHM_MPI NODESHM_LAUNCHER
nodeshm_first_command() {
    local c
    for c in "$@"; do
        if command -v "$c" >/dev/null 2>&1; then echo "$c"; return 0; fi
    done
    echo "$1"
}
case $NODESHM_MPI in
    openmpi)
        MPICC=$(nodeshm_first_command mpicc.openmpi mpicc)
        MPICXX=$(nodeshm_first_command mpicxx.openmpi mpicxx)
        MPIFC=$(nodeshm_first_command mpif90.openmpi mpif90)
        CARGO_TARGET_DIR=${NODESHM_TARGET_BASE:-$nodeshm_root/target}
        ;;
    mpich)
        MPICC=$(nodeshm_first_command mpicc.mpich mpicc)
        MPICXX=$(nodeshm_first_command mpicxx.mpich mpicxx)
        MPIFC=$(nodeshm_first_command mpif90.mpich mpif90)
        CARGO_TARGET_DIR=${NODESHM_TARGET_BASE:-$nodeshm_root/target}/mpich
        ;;
    *)
        echo "NODESHM_MPI=$NODESHM_MPI: expected openmpi or mpich" >&2
        return 2 2>/dev/null || exit 2
        ;;
esac
export MPICC MPICXX MPIFC CARGO_TARGET_DIR
# Open MPI refuses to run as root without these; they do nothing for MPICH.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
