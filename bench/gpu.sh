#!/usr/bin/env bash
# One prepared device run (H100/H200): install the carried wheels the GPU image lacks, run the
# benchmark at real sizes (GPT-2 medium + CLIP ViT-B/32, random weights), and leave the table in
# $OUT. Usage from the repository root on the GPU machine:  bash bench/gpu.sh [benchmark flags]
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || true
out=${OUT:-/tmp}
# --compile reduce-overhead: also time the GPT-2 step under torch.compile with CUDA graphs (an
# experiment: the LM forward + backward are half of a caption's kernel launches)
python3 bench/benchmark.py --results "$out/RESULTS-section.md" --compile reduce-overhead "$@" 2>&1 \
  | tee "$out/benchmark.log"
