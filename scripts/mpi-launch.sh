#!/usr/bin/env bash
# The one place that knows how each launcher is spelled. The tests (tests/support/launch.rs),
# the demo and the benchmark all start MPI jobs through it.
#
#   scripts/mpi-launch.sh -n RANKS [--bind core|none] [--env NAME=VALUE]... -- program [args...]
#
#   -n RANKS          number of ranks (more than the CPUs is allowed: oversubscribed)
#   --bind core       every rank on one core, round robin over the node's cores
#   --bind none       ranks free to run anywhere on the node
#                     (without --bind: the launcher's own default)
#   --env NAME=VALUE  set for every rank (repeatable)
#   --launcher-arg A  passed to the launcher as it is (repeatable)
#
# NODESHM_MPI (openmpi | mpich) and NODESHM_LAUNCHER (mpirun | srun) choose the stack:
#
#   openmpi + mpirun  mpirun --oversubscribe -n N [--bind-to core:overload-allowed|none] -x NAME
#   mpich + mpirun    mpirun.mpich (hydra) -n N [-bind-to core|none] -genv NAME VALUE
#   any + srun        srun --mpi=pmix (Open MPI) | pmi2 (MPICH) -n N --overcommit
#                     --kill-on-bad-exit=1, the environment exported; a binding asks for the
#                     whole node (salloc -N1 --exclusive) and --cpu-bind=cores, or
#                     --cpu-bind=map_cpu:0,1,... when there are more ranks than CPUs (Slurm binds
#                     no task to a core it would share); without --bind a standalone srun step
#                     gets one CPU and every rank runs on it
#
# The launcher is exec'd, so a caller that kills this process (group) kills the job.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=mpi-env.sh
source "$here/mpi-env.sh"

usage() {
    sed -n '4,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

np=1 bind=default envs=() extra=()
while (($#)); do
    case $1 in
        -n) np=$2; shift 2 ;;
        --bind) bind=$2; shift 2 ;;
        --env) envs+=("$2"); shift 2 ;;
        --launcher-arg) extra+=("$2"); shift 2 ;;
        --) shift; break ;;
        -h | --help) usage ;;
        *) echo "mpi-launch: unknown option $1" >&2; usage ;;
    esac
done
(($#)) || usage
[[ $np =~ ^[1-9][0-9]*$ ]] || { echo "mpi-launch: -n needs a rank count, got '$np'" >&2; exit 2; }
case $bind in default | core | none) ;; *) echo "mpi-launch: --bind core or none, got '$bind'" >&2; exit 2 ;; esac
for e in "${envs[@]}"; do
    [[ $e == *=* ]] || { echo "mpi-launch: --env needs NAME=VALUE, got '$e'" >&2; exit 2; }
    export "${e?}"
done

cmd=()
case $NODESHM_LAUNCHER/$NODESHM_MPI in
    mpirun/openmpi)
        cmd=("$(nodeshm_first_command mpirun.openmpi mpirun)" --oversubscribe -n "$np")
        case $bind in
            core) cmd+=(--bind-to core:overload-allowed) ;;
            none) cmd+=(--bind-to none) ;;
        esac
        for e in "${envs[@]}"; do cmd+=(-x "${e%%=*}"); done
        ;;
    mpirun/mpich)
        cmd=("$(nodeshm_first_command mpirun.mpich mpiexec.hydra mpirun)" -n "$np")
        case $bind in
            core) cmd+=(-bind-to core) ;;
            none) cmd+=(-bind-to none) ;;
        esac
        for e in "${envs[@]}"; do cmd+=(-genv "${e%%=*}" "${e#*=}"); done
        ;;
    srun/openmpi | srun/mpich)
        plugin=pmix
        [[ $NODESHM_MPI == mpich ]] && plugin=pmi2
        cmd=(srun "--mpi=$plugin" -n "$np" --overcommit --kill-on-bad-exit=1 --export=ALL)
        cpus=$(nproc)
        case $bind in
            core)
                if ((np <= cpus)); then cmd+=(--cpu-bind=cores)
                else cmd+=("--cpu-bind=map_cpu:$(seq -s, 0 $((cpus - 1)))"); fi
                cmd=(salloc --quiet -N1 --exclusive "${cmd[@]}")
                ;;
            none) cmd=(salloc --quiet -N1 --exclusive "${cmd[@]}" --cpu-bind=none) ;;
        esac
        ;;
    *)
        echo "mpi-launch: NODESHM_LAUNCHER=$NODESHM_LAUNCHER: expected mpirun or srun" >&2
        exit 2
        ;;
esac
exec "${cmd[@]}" "${extra[@]}" "$@"
