#!/usr/bin/env bash
# The measurements of docs/performance.md and docs/distributed.md on this machine's CPU:
# `instil bench speed` on the fmnist-iil10 preset, one switch at a time, each run alone.
#   scripts/bench-cpu.sh            # writes docs/perf/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/perf}
mkdir -p "$OUT"
bench() {  # name, then extra arguments
  local name=$1; shift
  echo "== $name"
  "$INSTIL" bench speed --preset configs/fmnist-iil10.yaml --steps 40 --json "$OUT/$name.json" "$@"
}
bench default                                      # fp32, channels_last, lean dbd step
bench four-call-dbd --set method_options.dbd.lean=false
bench no-channels-last --set channels_last=false
bench bf16 --set precision=bf16
OMP_NUM_THREADS=1 bench one-thread
echo "== two-processes (torchrun, gloo, one thread each)"
OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m instil \
  bench speed --preset configs/fmnist-iil10.yaml --steps 40 --json "$OUT/two-processes.json"
bench compiled --set compile=true
