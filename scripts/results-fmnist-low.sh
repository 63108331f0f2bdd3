#!/usr/bin/env bash
# Issue 23's tables of fmnist-low (configs/fmnist-low.yaml): finetune, dbd, lwf, ewc, er,
# der and joint on 5 order seeds first, then dbd's four ablations, all from M(0)s kept in
# docs/runs/fmnist-low/m0 (see results-queue.sh).
#   OMP_NUM_THREADS=1 scripts/results-fmnist-low.sh &  OMP_NUM_THREADS=1 scripts/results-fmnist-low.sh &
cd "$(dirname "$0")/.."
export PRESET=configs/fmnist-low.yaml
export OUT=${OUT:-runs/fmnist-low}
export M0_DIR=${M0_DIR:-docs/runs/fmnist-low/m0}
export CORE="finetune, dbd, lwf, ewc, er, der, joint"
export REST="dbd-nofl, dbd-nodis, dbd-nokc, dbd-dis-only"
exec scripts/results-queue.sh "$@"
