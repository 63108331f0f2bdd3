#!/usr/bin/env bash
# The runs behind docs/results-fmnist.md, resumable: a finished (method, order seed) pair is
# kept, an interrupted one goes on after its last saved epoch. Extra arguments go to
# `instil run`, e.g. --set 'methods=[finetune, dbd, joint]' to run those first.
#   scripts/results-fmnist.sh [--set ...]
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
"$INSTIL" run configs/fmnist-iil10.yaml --out runs/fmnist-iil10 --resume --no-progress "$@"
