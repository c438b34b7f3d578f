#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py says what it runs; 5 minutes on
# one H200, docs/performance.md "CUDA"): one table on the screen, OUT/gpu-check.json to paste into
# docs/performance.md, the commands' output in OUT/gpu-check.log.
# Usage (repository root):
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh            # on a CUDA machine
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh --dry-run  # tiny sizes on the CPU (CI, tests)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
exec python benchmarks/gpu_check.py --out "${OUT:-gpu-check}" "$@"
