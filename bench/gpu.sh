#!/usr/bin/env bash
# One prepared device run (H100/H200): install the carried wheels the GPU image lacks, run the
# benchmark at real sizes (GPT-2 medium + CLIP ViT-B/32, random weights), and leave the table in
# $OUT. Usage from the repository root on the GPU machine:  bash bench/gpu.sh [benchmark flags]
#
# What it times, in one run that fits ~8 minutes on one H200: the fast form eager, compiled
# (default) and compiled with CUDA graphs (reduce-overhead), each with its warm-up (compile)
# time; the literal reference decoder (the authors' algorithm, ~40 s a caption); a batch of 16;
# captions/s with 1, 4 and 16 clients in flight (the container's engine); mixed settings (30%
# and 50% of other settings, a heavy request among light ones) and a lone request in containers
# sized for 1, 8 and 16 (compiled sizes); a profile; the pseudo-token method (their follow-up):
# their code (tests/reference_pseudo_tokens.py, on the GPU) against the fast form, one request
# and 4 together, 5 sentences of 20 tokens, outputs compared (it is not compiled). The exact
# form is left out (as slow as the reference at real sizes). Partial results stay in the log.
# `bash bench/gpu.sh families` (a second run): today's LM families at their real sizes (Qwen2.5-0.5B,
# Llama-3.2-1B, SmolLM2-360M, Gemma-3-1B, Pythia-410M, GPT-2 medium; random weights), a row each.
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || true
out=${OUT:-/tmp}
if [ "${1:-}" = "families" ]; then  # bash bench/gpu.sh families: a row per LM family (bench/families.py), ~3 min
  shift
  python3 bench/families.py --no-exact --results "$out/RESULTS-families.md" "$@" 2>&1 | tee "$out/families.log"
  exit 0
fi
python3 bench/benchmark.py --results "$out/RESULTS-section.md" --compile default,reduce-overhead --no-exact \
  --repeats 2 --concurrency 1,4,16 "$@" 2>&1 | tee "$out/benchmark.log"
