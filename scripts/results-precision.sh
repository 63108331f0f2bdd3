#!/usr/bin/env bash
# bf16 mixed precision against fp32 on the fmnist-iil10 protocol (docs/performance.md):
# finetune and dbd on order seeds 0 and 1 with precision bf16, M(0) trained in bf16 too,
# to set beside the fp32 runs of runs/fmnist-iil10 (same seeds, same data order). Resumable
# like scripts/results-fmnist.sh; extra arguments go to `instil run`.
#   scripts/results-precision.sh [--set ...]
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
"$INSTIL" run configs/fmnist-iil10.yaml --out runs/fmnist-iil10-bf16 --resume --no-progress \
    --set name=fmnist-iil10-bf16 --set precision=bf16 --set 'methods=[finetune, dbd]' \
    --set 'order_seeds=[0, 1]' "$@"
