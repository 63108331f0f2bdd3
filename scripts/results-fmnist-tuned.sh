#!/usr/bin/env bash
# Issue 22's rerun of fmnist-iil10: the baselines whose code or settings changed since the
# tables of docs/results-fmnist.md (finetune's and er's tuned budgets, finetune-es's tuned
# selection, er's memory batch, onpro's crop and optimiser, icarl's two classifiers, podnet
# on its own M(0)), one folder per order seed so that two seeds can run side by side;
# resumable. `check` reruns lwf on order seed 0 (into its own folder, so that it is not
# merged twice) to check that the unchanged methods' earlier runs (lwf, ewc, der, podnet,
# dbd and its ablations, joint: changed since only by the loss-term record) are reproduced
# by today's code.
#   scripts/results-fmnist-tuned.sh 0 1 2 check   # order seeds, one after another
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
OUT=${OUT:-runs/fmnist-iil10-tuned}
CHANGED="finetune, finetune-es, er, onpro, icarl, podnet-lsc, icarl-cnn"
for seed in "$@"; do
  if [ "$seed" = check ]; then
    "$INSTIL" run configs/fmnist-iil10.yaml --out "$OUT/lwf-check" --resume --no-progress \
      --set "order_seeds=[0]" --set "methods=[lwf]"
    continue
  fi
  "$INSTIL" run configs/fmnist-iil10.yaml --out "$OUT/s$seed" --resume --no-progress \
    --set "order_seeds=[$seed]" --set "methods=[$CHANGED]"
done
