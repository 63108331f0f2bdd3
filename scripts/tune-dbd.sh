#!/usr/bin/env bash
# The DBD sweep of docs/tuning.md: fmnist-iil10, order seed 0, scored on a validation slice
# of 10% held out of the *training* data (validation_fraction), never on the test set.
# Resumable: a point whose results.json is complete is skipped. Runs one point at a time.
#   scripts/tune-dbd.sh            # every point below
#   instil compare runs/tune/*     # the table
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tune-lib.sh

# name | methods | extra --set items (space-separated)
POINTS=(
  "finetune|[finetune]|"
  "dbd-a0.9-f10|[dbd]|method_options.dbd.alpha=0.9 method_options.dbd.freeze_epochs=10"
  "dbd-a0.5-f10|[dbd]|method_options.dbd.alpha=0.5 method_options.dbd.freeze_epochs=10"
  "dbd-a0.5-f6|[dbd]|method_options.dbd.alpha=0.5 method_options.dbd.freeze_epochs=6"
  # Sweep 2: one knob at a time away from the defaults (alpha 0.9, freeze 10, sigma 1, ...).
  "dbd-s0.5|[dbd]|method_options.dbd.sigma=0.5"
  "dbd-s2|[dbd]|method_options.dbd.sigma=2"
  "dbd-b2|[dbd]|method_options.dbd.beta=2"
  "dbd-lo2|[dbd]|method_options.dbd.lambda_out=2"
  "dbd-t2|[dbd]|method_options.dbd.tau=2"
  "dbd-k1-a0.99|[dbd]|method_options.dbd.ema_every=1 method_options.dbd.alpha=0.99"
  "dbd-li0.5|[dbd]|method_options.dbd.lambda_in=0.5"
  "dbd-e20|[dbd]|phase.epochs=20"
)

run_points "${POINTS[@]}"
"$INSTIL" compare "$OUT"/*/
