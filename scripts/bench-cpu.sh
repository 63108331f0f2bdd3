#!/usr/bin/env bash
# The measurements of docs/performance.md and docs/distributed.md on this machine's CPU:
# `instil bench speed` on the fmnist-iil10 preset, one switch at a time, each run alone.
#   scripts/bench-cpu.sh            # writes docs/perf/*.json (~15 minutes)
#   python3 scripts/perf-table.py docs/perf/*.json   # the table of docs/performance.md
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
bench default                                      # fp32, channels_last, four-call dbd step
bench lean-dbd --set method_options.dbd.lean=true
bench no-channels-last --set channels_last=false
bench bf16 --set precision=bf16
OMP_NUM_THREADS=1 bench one-thread
echo "== two-processes (torchrun, gloo, one thread each)"
OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m instil \
  bench speed --preset configs/fmnist-iil10.yaml --steps 40 --json "$OUT/two-processes.json"
timeout 600 "$INSTIL" bench speed --preset configs/fmnist-iil10.yaml --steps 40 \
  --json "$OUT/compiled.json" --set compile=true || echo "compiled: failed or timed out"
