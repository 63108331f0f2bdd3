#!/usr/bin/env bash
# fmnist-low's base epochs, chosen on the validation slice (10% of the training set held
# out; never the test set): M(0) trained on D(0) with each candidate budget, order seed 0,
# and its validation accuracy read from the run (the run's one cheap finetune epoch a phase
# is only there because a run needs a method). The smallest budget that more epochs do not
# beat is the preset's.
#   scripts/fmnist-low-base.sh [EPOCHS ...]     # default: 15 30 60 100
set -euo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
OUT=${OUT:-runs/fmnist-low-base}
epochs=("$@")
[ ${#epochs[@]} -gt 0 ] || epochs=(15 30 60 100)
for e in "${epochs[@]}"; do
  "$INSTIL" run configs/fmnist-low.yaml --out "$OUT/e$e" --resume --no-progress \
    --set base.epochs="$e" --set validation_fraction=0.1 --set 'order_seeds=[0]' \
    --set 'methods=[finetune]' --set phase.epochs=1 >/dev/null
  python3 - "$OUT/e$e/results.json" "$e" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m0 = r["runs"][0]["base"]
print(f"base epochs {sys.argv[2]}: M(0) validation accuracy {m0['acc_test']:.2f}, "
      f"D(0) accuracy {m0['acc_base']:.2f}")
PY
done
