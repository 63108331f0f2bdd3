#!/usr/bin/env bash
# dbd and its ablations on one order seed of fmnist-skew and fmnist-shift, side by side (one
# process per preset, one CPU thread each), into OUT/fmnist-<preset>-s<seed>-abl: every run
# of a folder shares one M(0), so `instil compare DIR --paired-to dbd` pairs them exactly.
#   scripts/streams-ablations.sh OUT SECONDS   (SEED, PRESETS and PYTHON narrow or change it)
# Resumable: a process ended by the SECONDS bound goes on with the same command.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/streams-ablations.sh OUT SECONDS}
seconds=${2:?usage: scripts/streams-ablations.sh OUT SECONDS}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
seed=${SEED:-0}
# dbd first: the reference of every paired difference; then the ablations, the ones that
# tell DBD's parts apart on these streams (FL, the EMA, dusting) before dbd-dis-only.
methods='[dbd, dbd-nofl, dbd-nokc, dbd-nodis, dbd-dis-only]'
mkdir -p "$out"
for preset in ${PRESETS:-skew shift}; do
    name="fmnist-$preset-s$seed-abl"
    OMP_NUM_THREADS=1 timeout -s TERM "$seconds" "$PYTHON" -m instil run \
        "configs/fmnist-$preset.yaml" --out "$out/$name" --resume --no-progress \
        --set "order_seeds=[$seed]" --set "methods=$methods" \
        >> "$out/$name.log" 2>&1 &
done
wait
