#!/usr/bin/env bash
# The GPU measurements of docs/performance.md, for one device call each (CUDA machine, repository
# root, torch preinstalled):
#   bash benchmarks/gpu.sh tests  OUTDIR   # FlexAttention and torch.compile against the reference path
#   bash benchmarks/gpu.sh d12    OUTDIR   # d12 training (bf16, compiled, flex) + decoding
#   bash benchmarks/gpu.sh d20    OUTDIR   # d20 training (bf16, compiled, flex)
# Compiling the whole interleaved step takes minutes (longer at d20): each step has a time limit.
set -uo pipefail
what=$1; out=${2:-runs/gpu}; mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
train() {  # config, schedules
  timeout 450 python3 -m lrt bench train --config "$1" --device cuda --dtype bfloat16 --compile --attention flex \
    --schedules "$2" --repeats 5 --json "$out/$1_compiled_flex.json" > "$out/$1_compiled_flex.txt" 2>&1
  grep -v Warn "$out/$1_compiled_flex.txt" | tail -5
}
case $what in
  tests) python3 -m pytest -q -p no:cacheprovider tests/test_fast_paths.py 2>&1 | tail -5 | tee "$out/tests.txt" ;;
  d12) train d12 "baseline,interleaved:2"
       timeout 100 python3 -m lrt bench decode --config d12 --device cuda --dtype bfloat16 --repeats 2 --tokens 32 \
         --json "$out/d12_decode.json" 2>&1 | grep -v "^round" | tee "$out/d12_decode.txt" ;;
  d20) train d20 "baseline,interleaved:2" ;;
  *) echo "usage: bash benchmarks/gpu.sh tests|d12|d20 OUTDIR" >&2; exit 2 ;;
esac
