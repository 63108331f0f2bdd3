#!/usr/bin/env bash
# The stream runs behind docs/results-fmnist.md (issue: class-skewed and sub-population-
# shift streams): the presets fmnist-skew and fmnist-shift with their methods (finetune, dbd,
# lwf, joint), one order seed at a time for both, so that an interrupted session leaves both
# with the same seeds; resumable like scripts/results-fmnist.sh. Extra arguments go to
# `instil run`, e.g. --set 'methods=[finetune, dbd, dbd-nofl, dbd-nodis, dbd-nokc,
# dbd-dis-only, lwf, joint]' for the ablations too (a resume may add methods).
#   scripts/results-streams.sh [--set ...]
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
seeds=""
for seed in 0 1 2 3 4; do
    seeds="${seeds:+$seeds, }$seed"
    for preset in skew shift; do
        # A growing seed list: --resume keeps the finished seeds and runs the new one.
        "$INSTIL" run "configs/fmnist-$preset.yaml" --out "runs/fmnist-$preset" --resume \
            --no-progress --set "order_seeds=[$seeds]" "$@"
    done
done
