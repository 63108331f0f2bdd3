#!/usr/bin/env bash
# Issue 22's rerun of fmnist-iil10: the baselines whose code or settings changed since the
# tables of docs/results-fmnist.md (finetune's and er's tuned budgets, finetune-es's tuned
# selection, er's memory batch, onpro's crop and optimiser, icarl's two classifiers, podnet
# on its own M(0)), one folder per order seed so that two seeds can run side by side;
# resumable. `check` reruns lwf on order seed 0 (into its own folder, so that it is not
# merged twice) to check that the unchanged methods' earlier runs (lwf, ewc, der, podnet,
# dbd and its ablations, joint: changed since only by the loss-term record) are reproduced
# by today's code.
# Each seed's M(0) must be the one the older runs started from (merge refuses otherwise):
# those were trained with 2 threads, and torch's sums depend on the thread count, so the
# first method of a seed (finetune, which trains M(0) into the cache when it is not there)
# and `check` run with BASE_THREADS (2) threads, the others with the caller's. A seed whose
# folder already holds runs (a resume: `run` refuses a method list that drops them, and the
# cache may have lost M(0)) runs all its methods with BASE_THREADS.
#   scripts/results-fmnist-tuned.sh 0 check 1 2 3 4   # order seeds, one after another
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
OUT=${OUT:-runs/fmnist-iil10-tuned}
BASE_THREADS=${BASE_THREADS:-2}
CHANGED="finetune, finetune-es, er, onpro, icarl, podnet-lsc, icarl-cnn"
run() {  # folder, order seed, methods
  "$INSTIL" run configs/fmnist-iil10.yaml --out "$OUT/$1" --resume --no-progress \
    --set "order_seeds=[$2]" --set "methods=$3"
}
for seed in "$@"; do
  if [ "$seed" = check ]; then
    OMP_NUM_THREADS=$BASE_THREADS run lwf-check 0 "[lwf]"
    continue
  fi
  if [ -e "$OUT/s$seed/results.json" ]; then
    OMP_NUM_THREADS=$BASE_THREADS run "s$seed" "$seed" "[$CHANGED]"
    continue
  fi
  OMP_NUM_THREADS=$BASE_THREADS run "s$seed" "$seed" "[finetune]"
  run "s$seed" "$seed" "[$CHANGED]"
done
