#!/usr/bin/env bash
# The CUDA checks in one short script (about 5 minutes on one H100/H200-class GPU):
# the CUDA tests, the training-throughput bench (iresnet50 112x112, batch 256), the
# extraction speed, and a single-GPU torchrun run that exercises the NCCL path.
# Usage (repository root, GPU image with torch etc. installed):
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
export PYTHONPATH="${PYTHONPATH:-.}"
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

echo "== CUDA tests"
python -m pytest -q -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.txt"

echo "== eqm bench train (full CUDA settings)"
python -m eqmcli bench train --device cuda --json "$OUT/bench-train.json" 2>&1 \
  | tee "$OUT/bench-train.txt"

echo "== eqm bench extract"
python -m eqmcli bench extract --device cuda --batch 256 --batches 8 2>&1 | tee "$OUT/extract.txt"
python -m eqmcli bench extract --device cuda --batch 256 --batches 8 --flip 2>&1 \
  | tee -a "$OUT/extract.txt"

echo "== single-GPU torchrun (NCCL), sharded head, one epoch of the quickstart"
torchrun --standalone --nproc_per_node=1 -m eqmcli train recipes/quickstart.yaml \
  --out "$OUT/nccl-run" --force --no-progress --set train.epochs=1 \
  --set train.distributed=sharded 2>&1 | tee "$OUT/nccl-run.txt"
