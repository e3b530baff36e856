#!/bin/bash
# Multi-node, multi-GPU training with torchrun under SLURM: one torchrun launcher per node, one process
# per GPU. Usage:  sbatch --nodes=2 cluster/train_sbatch.sh configs/qvhighlights.yaml
# Adjust the #SBATCH lines (or override them on the sbatch command line) for your cluster.
#SBATCH --job-name=lamflow-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=lamflow-train-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch cluster/train_sbatch.sh CONFIG.yaml [extra lamflow train args]}
shift
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-$(nvidia-smi --list-gpus | wc -l)}
# The first node of the allocation hosts the rendezvous; every torchrun finds it there.
RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RDZV_PORT=${RDZV_PORT:-29500}
# Data loader workers and torch intra-op threads share the node's CPUs between the GPU processes.
export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / GPUS_PER_NODE ))
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_NNODES" \
    --nproc-per-node="$GPUS_PER_NODE" \
    --rdzv-id="$SLURM_JOB_ID" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="$RDZV_HOST:$RDZV_PORT" \
    -m lamflow.cli train "$CONFIG" "$@"
