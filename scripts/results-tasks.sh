#!/usr/bin/env bash
# The task-number ablation behind docs/results-fmnist.md (METHOD.md §2: more phases over the
# same incremental half keep PP and raise F slightly): fmnist-iil10 cut into 5 and into 20
# phases, each phase with the preset's 12 epochs, so the total data and steps stay those of
# the 10-phase runs (runs/fmnist-iil10). Resumable like scripts/results-fmnist.sh; extra
# arguments go to `instil run`, e.g. --set 'order_seeds=[0]'.
#   scripts/results-tasks.sh [--set ...]
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
for phases in 5 20; do
    "$INSTIL" run configs/fmnist-iil10.yaml --out "runs/fmnist-iil10-p$phases" --resume \
        --no-progress --set "name=fmnist-iil$phases" --set "n_phases=$phases" --set 'methods=[finetune, dbd]' "$@"
done
