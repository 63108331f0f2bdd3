#!/usr/bin/env bash
# The stream runs behind docs/results-fmnist.md (fmnist-skew, fmnist-shift) on one GPU
# machine: every (preset, order seed) runs in its own process, all at once, since this small
# ResNet leaves a GPU mostly idle in one process; then `instil merge` joins each preset's
# seeds into one run folder. Needs python3 with torch, numpy, pyyaml, tqdm and matplotlib,
# and Fashion-MNIST where the fmnist loader looks ($INSTIL_DATA works).
#   scripts/device-streams.sh OUT SECONDS [--set ...]
# OUT receives fmnist-<preset>-s<seed>/ (and .log) per process and the merged
# fmnist-<preset>/; SECONDS bounds each process, whose results.json keeps every method that
# finished (a run interrupted by the bound can be resumed with --resume). Extra arguments go
# to every `instil run`. PRESETS and SEEDS (space-separated) narrow the grid; METHODS (a
# YAML list) replaces the methods, and SUFFIX is added to every folder name, so that another
# set of methods on the same seeds (dbd and its ablations: SUFFIX=-abl) gets its own folders,
# each of whose runs share one M(0).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/device-streams.sh OUT SECONDS [--set ...]}
seconds=${2:?usage: scripts/device-streams.sh OUT SECONDS [--set ...]}
shift 2
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1  # logs show progress while the runs go on
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# The paper's comparison first, then the ablations, so that a bound that cuts the runs
# short cuts the ablations.
methods=${METHODS:-'[finetune, dbd, lwf, joint, dbd-nofl, dbd-nodis, dbd-nokc, dbd-dis-only]'}
suffix=${SUFFIX:-}
mkdir -p "$out"
for preset in ${PRESETS:-skew shift}; do
    for seed in ${SEEDS:-0 1 2 3 4}; do
        name="fmnist-$preset-s$seed$suffix"
        # One CPU thread each: the processes share the machine's cores.
        OMP_NUM_THREADS=1 timeout -s TERM "$seconds" "$PYTHON" -m instil run \
            "configs/fmnist-$preset.yaml" --out "$out/$name" --resume --no-progress \
            --set "order_seeds=[$seed]" --set "methods=$methods" "$@" \
            >> "$out/$name.log" 2>&1 &  # appended: a resumed run keeps its earlier log
    done
done
wait
for preset in ${PRESETS:-skew shift}; do
    folders=()
    for seed in ${SEEDS:-0 1 2 3 4}; do
        [ -f "$out/fmnist-$preset-s$seed$suffix/results.json" ] && folders+=("$out/fmnist-$preset-s$seed$suffix")
    done
    if [ "${#folders[@]}" -ge 2 ]; then
        "$PYTHON" -m instil merge "${folders[@]}" --out "$out/fmnist-$preset$suffix"
    fi
done
