# Sourced by the cluster's sbatch scripts once $script is the path of the submitted script (sbatch runs a
# spool copy of it; each script asks scontrol for the original). Sets:
#   PYTHON  the project's venv Python, used without activation: $LAMFLOW_VENV, else .venv in the
#           repository that holds the script
#   GPUS    the GPUs SLURM granted on this node (SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE or
#           CUDA_VISIBLE_DEVICES), 0 without any
VENV=${LAMFLOW_VENV:-$(cd "$(dirname "$script")/.." && pwd)/.venv}
PYTHON=$VENV/bin/python
if [[ ! -x $PYTHON ]]; then
    echo "$(basename "$script"): error: no Python at $PYTHON; set LAMFLOW_VENV to the project's virtual environment" >&2
    exit 2
fi

if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then
    GPUS=$SLURM_GPUS_ON_NODE
elif [[ -n ${SLURM_GPUS_PER_NODE:-} ]]; then
    GPUS=${SLURM_GPUS_PER_NODE##*:}  # "4" or "a100:4"
elif [[ -n ${CUDA_VISIBLE_DEVICES:-} && ${CUDA_VISIBLE_DEVICES} != NoDevFiles ]]; then
    IFS=, read -ra visible <<< "$CUDA_VISIBLE_DEVICES"
    GPUS=${#visible[@]}
else
    GPUS=0
fi
