#!/usr/bin/env bash
# Issue 22's rerun of fmnist-iil10's baseline comparison with the fixed and tuned baselines
# (finetune's and er's tuned budgets, finetune-es's tuned selection, er's memory batch,
# onpro's crop and optimiser, icarl's two classifiers, podnet on its own M(0)), with dbd and
# joint beside them: every method of the comparison, from new M(0)s. The older tables' runs
# cannot be reused: this machine retrained their M(0)s of order seeds 0 and 1 to 91.65 and
# 91.63 on 2026-12-02, where they had scored 91.39 and 91.59 (see results-queue.sh).
#   OMP_NUM_THREADS=1 scripts/results-fmnist-tuned.sh &  OMP_NUM_THREADS=1 scripts/results-fmnist-tuned.sh &
#   scripts/results-fmnist-tuned.sh 0 1     # only these order seeds
cd "$(dirname "$0")/.."
export PRESET=configs/fmnist-iil10.yaml
export OUT=${OUT:-runs/fmnist-iil10-tuned}
export M0_DIR=${M0_DIR:-docs/runs/fmnist-iil10-tuned/m0}
export CORE="finetune, dbd, lwf, ewc, er, der, joint"
export REST="finetune-es, icarl, icarl-cnn, podnet, podnet-lsc, onpro"
exec scripts/results-queue.sh "$@"
