#!/usr/bin/env bash
# The GPU measurements of docs/performance.md (CUDA machine, repository root, torch preinstalled).
# Each part has its own time limit, cut to what is left before DEADLINE (epoch seconds, optional),
# so one slow compile cannot spend a whole device lease:
#   bash benchmarks/gpu.sh tests   OUTDIR  # CUDA-only tests: FlexAttention, compiled training, CUDA-graph decoding
#   bash benchmarks/gpu.sh d12     OUTDIR  # d12 training (bf16, compiled per block, flex)
#   bash benchmarks/gpu.sh decode  OUTDIR  # d12 and d20 decoding, bf16, batch 1: eager against the CUDA-graph step
#   bash benchmarks/gpu.sh d20     OUTDIR  # d20 training: cold compile (interleaved first), MFU, peak memory
#   bash benchmarks/gpu.sh muon    OUTDIR  # d20's Muon step: torch.optim.Muon against lrt's (batched, compiled)
#   bash benchmarks/gpu.sh d20-step OUTDIR # d20 at 524,288 tokens per step (32 micro-batches): the step MFU and
#                                          # the optimizer's share as in training (issue 22's targets)
#   bash benchmarks/gpu.sh all     OUTDIR  # tests, decode, d20, in that order
set -uo pipefail
what=$1; out=${2:-runs/gpu}; mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
deadline=${DEADLINE:-$(( $(date +%s) + 3600 ))}

limited() {  # seconds, command...: the command under min(seconds, time left), its output kept in $log
  local left=$(( deadline - $(date +%s) ))
  (( left < 20 )) && { echo "skipped (no time left): ${*:2}"; return; }
  timeout $(( $1 < left ? $1 : left )) "${@:2}" > "$log" 2>&1
  echo "exit $? after $SECONDS s: ${*:2}" >> "$log"
  grep -v -e "^round" -e Warn "$log" | tail -25
}

tests() {
  log=$out/tests.txt limited 150 python3 -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_decoding.py tests/test_fast_paths.py
}
decode() {  # configs (default d12 d20)
  for config in ${*:-d12 d20}; do
    log=$out/decode_$config.txt limited 170 python3 -m lrt bench decode --config "$config" --device cuda \
      --dtype bfloat16 --batch 1 --tokens 32 --repeats 3 --compile --variants baseline,LRT-shared \
      --json "$out/decode_$config.json"
  done
}
train() {  # config, schedules, seconds, name, extra flags...
  log=$out/train_$4.txt limited "$3" python3 -m lrt bench train --config "$1" --device cuda --dtype bfloat16 \
    --compile --attention flex --schedules "$2" --repeats 3 --json "$out/train_$4.json" "${@:5}"
}

case $what in
  tests) tests ;;
  decode) decode ;;
  d12) train d12 "baseline,interleaved:2" 450 d12 ;;
  d20) train d20 "interleaved:2,baseline" 450 d20 ;;  # interleaved first: its first step is a cold compile
  muon) log=$out/muon.txt limited 200 python3 benchmarks/muon_step.py --config d20 --device cuda --rounds 5 ;;
  d20-step) train d20 "interleaved:2,baseline" 500 d20_step --batch-size 8 --total-batch-size 524288 --repeats 2 ;;
  all) tests; decode; train d20 "interleaved:2,baseline" 450 d20 ;;
  *) echo "usage: bash benchmarks/gpu.sh tests|d12|decode|d20|muon|d20-step|all OUTDIR" >&2; exit 2 ;;
esac
