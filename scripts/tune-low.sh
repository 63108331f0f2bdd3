#!/usr/bin/env bash
# DBD's promotion on fmnist-low (issue 23): the levers that decide how much of the new data
# reaches the deployed teacher, against finetune and lwf with the same budget, on the
# validation slice of fmnist-low (order seed 0; never the test set). Needs the preset's
# base epochs chosen first (scripts/fmnist-low-base.sh). Resumable, one point at a time.
#   scripts/tune-low.sh             # every point below, into runs/tune-low/
#   instil compare runs/tune-low/*/
#   SEED=1 ONLY="finetune lwf dbd-l3-h1" scripts/tune-low.sh   # candidates on order seed 1
set -euo pipefail
cd "$(dirname "$0")/.."
export PRESET=configs/fmnist-low.yaml OUT=${OUT:-runs/tune-low}
# The sweep's baseline is the paper's DBD with the preset's freezing period; the preset's
# dbd setting is this sweep's winner since (a point adds its own options to this).
POINT_BASE=(--set 'method_options.dbd={freeze_epochs: 4}')
source scripts/tune-lib.sh

D=method_options.dbd
POINTS=(
  "finetune|[finetune]|"
  "lwf|[lwf]|"
  "dbd|[dbd]|"                                              # the preset's: E_f 4 of 6, α 0.9
  # The label against the teacher: λ weighs the one-hot label in the fused target.
  "dbd-l3|[dbd]|$D.lambda_in=3 $D.lambda_out=3"
  # How fast the teacher follows the student: half-life 1 EMA step is α 0.5.
  "dbd-h1|[dbd]|$D.half_life=1"
  # The student goes on from the last phase's student instead of the teacher (the
  # structural lever: run first).
  "dbd-carry|[dbd]|$D.student_start=carry"
  "dbd-carry-h1|[dbd]|$D.student_start=carry $D.half_life=1"
  # A student that carries on and follows the labels (λ 10), the teacher a slow EMA of its
  # whole trajectory across phases (a mean teacher).
  "dbd-carry-l10|[dbd]|$D.student_start=carry $D.lambda_in=10 $D.lambda_out=10"
  "dbd-l3-h1|[dbd]|$D.lambda_in=3 $D.lambda_out=3 $D.half_life=1"
  "dbd-l10-h1|[dbd]|$D.lambda_in=10 $D.lambda_out=10 $D.half_life=1"
  "dbd-h1-f2|[dbd]|$D.half_life=1 $D.freeze_epochs=2"     # 5 EMA steps a phase, not 3
  "dbd-b0.5|[dbd]|$D.beta=0.5"
)

run_points "${POINTS[@]}"
[ "$SEED" = 0 ] && "$INSTIL" compare "$OUT"/*/ || true
