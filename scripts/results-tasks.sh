#!/usr/bin/env bash
# The task-number ablation behind docs/results-fmnist.md (METHOD.md §2: more phases over the
# same incremental half keep PP and raise F slightly): fmnist-iil10 cut into 5 and into 20
# phases, each phase with the preset's 12 epochs, so that the data and the steps in all are
# those of the 10-phase runs (runs/fmnist-iil10); finetune and dbd. One order seed at a time
# for both phase counts, so that an interrupted session leaves both with the same seeds;
# resumable like scripts/results-fmnist.sh. Extra arguments go to `instil run`.
#   scripts/results-tasks.sh [--set ...]
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
seeds=""
for seed in 0 1 2 3 4; do
    seeds="${seeds:+$seeds, }$seed"
    for phases in 5 20; do
        # A growing seed list: --resume keeps the finished seeds and runs the new one.
        "$INSTIL" run configs/fmnist-iil10.yaml --out "runs/fmnist-iil10-p$phases" --resume \
            --no-progress --set "name=fmnist-iil10-p$phases" --set "n_phases=$phases" \
            --set 'methods=[finetune, dbd]' --set "order_seeds=[$seeds]" "$@"
    done
done
