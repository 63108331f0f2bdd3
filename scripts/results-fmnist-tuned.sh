#!/usr/bin/env bash
# Issue 22's rerun of fmnist-iil10: the baselines whose code or settings changed since the
# tables of docs/results-fmnist.md (finetune's and er's tuned budgets, finetune-es's tuned
# selection, er's memory batch, onpro's crop and optimiser, icarl's two classifiers, podnet
# on its own M(0)), one folder per order seed so that two seeds can run side by side;
# resumable. lwf reruns on order seed 0 only, to check that the unchanged methods' earlier
# runs (lwf, ewc, der, dbd, joint) are reproduced by today's code.
#   scripts/results-fmnist-tuned.sh 0 1 2      # order seeds, one after another
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
OUT=${OUT:-runs/fmnist-iil10-tuned}
CHANGED="finetune, finetune-es, er, icarl, icarl-cnn, podnet, podnet-lsc, onpro"
for seed in "$@"; do
  methods="[$CHANGED]"
  [ "$seed" = 0 ] && methods="[$CHANGED, lwf]"
  "$INSTIL" run configs/fmnist-iil10.yaml --out "$OUT/s$seed" --resume --no-progress \
    --set "order_seeds=[$seed]" --set "methods=$methods"
done
