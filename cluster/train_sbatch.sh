#!/bin/bash
# Training with torchrun under SLURM: one torchrun launcher per node, one process per GPU (or CPU processes).
#   sbatch --nodes=2 --gpus-per-node=4 --cpus-per-task=32 cluster/train_sbatch.sh CONFIG.yaml [key=value ...]
#   sbatch --cpus-per-task=8 cluster/train_sbatch.sh CONFIG.yaml                    # CPU: 1 process per node
#   sbatch --ntasks-per-node=4 --cpus-per-task=2 cluster/train_sbatch.sh CONFIG.yaml   # CPU: 4 processes per node
# Adjust the #SBATCH lines (or override them on the sbatch command line) for your cluster.
#
# Safe to requeue: the same command starts the run and continues it (lamflow train resumes from the
# newest checkpoint in run.out_dir). SIGTERM from scancel, `scontrol requeue` or preemption reaches the
# trainer, which drops its unfinished step, checkpoints the last finished one within a second and exits; --signal=B:USR1
# warns this script before the walltime: it stops the trainer the same way, then requeues the job.
#SBATCH --job-name=lamflow-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=lamflow-train-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch cluster/train_sbatch.sh CONFIG.yaml [key=value ...]}
shift

# sbatch runs a spool copy of the script; scontrol knows where the original is, beside allocation.sh.
script=$0
if [[ -n ${SLURM_JOB_ID:-} ]]; then
    submitted=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n 1)
    [[ -f $submitted ]] && script=$submitted
fi
source "$(dirname "$script")/allocation.sh"  # PYTHON, GPUS

# Processes per node: the node's GPUs as SLURM granted them; without GPUs, --ntasks-per-node CPU processes.
if (( GPUS > 0 )); then
    NPROC=$GPUS
else
    NPROC=${SLURM_NTASKS_PER_NODE:-1}
    echo "train_sbatch.sh: no GPU in this allocation: training on CPU with $NPROC process(es) per node" >&2
fi
CPUS=${SLURM_CPUS_PER_TASK:-1}
# Data loader workers and torch intra-op threads share the node's CPUs between the processes.
export OMP_NUM_THREADS=$(( CPUS / NPROC > 0 ? CPUS / NPROC : 1 ))
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# The first node of the allocation hosts the rendezvous; every torchrun finds it there.
RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RDZV_PORT=${RDZV_PORT:-29500}
echo "train_sbatch.sh: job $SLURM_JOB_ID attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )) on $SLURM_JOB_NODELIST: $SLURM_NNODES node(s) x $NPROC process(es)" >&2

# scancel, requeue and preemption send SIGTERM to the job steps themselves (torchrun passes it to the trainer):
# this shell only has to outlive them. The walltime warning reaches this shell alone: pass SIGTERM on to the
# steps the same way (signalling srun itself would make it kill the step).
walltime_warning=0
trap 'walltime_warning=1; scancel --signal=TERM "$SLURM_JOB_ID"' USR1
trap ':' TERM

srun --kill-on-bad-exit=1 --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task="$CPUS" \
    "$PYTHON" -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" \
    --nproc-per-node="$NPROC" \
    --rdzv-id="$SLURM_JOB_ID" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="$RDZV_HOST:$RDZV_PORT" \
    -m lamflow.cli train "$CONFIG" "$@" &
launcher=$!
# A trapped signal interrupts `wait`; keep waiting until the trainer has saved its checkpoint and exited.
while true; do
    status=0
    wait "$launcher" || status=$?
    kill -0 "$launcher" 2>/dev/null || break
done
if (( walltime_warning )); then
    echo "train_sbatch.sh: walltime close: checkpoint saved, requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
