#!/usr/bin/env bash
# DBD's promotion on fmnist-iil10 (issue 23): fmnist-low's winning levers (the label's
# weight λ in the fused target, an EMA half-life of 1 step) tried on fmnist-iil10's
# validation slice (order seed 0; never the test set), beside lwf and dbd's defaults on the
# same M(0) so that the points pair. That M(0) is the one kept in docs/runs/tune/m0 (der's
# sweep used it too): copy it into the base-model cache first, or the run retrains its own.
#   cp docs/runs/tune/m0/*.pt ~/.cache/instil/base/
#   scripts/tune-dbd-promote.sh                   # resumable, one point at a time
#   ONLY="lwf dbd" scripts/tune-dbd-promote.sh    # some points only (a second lane)
#   instil compare runs/tune-promote/*/
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-runs/tune-promote}
source scripts/tune-lib.sh

D=method_options.dbd
POINTS=(
  "lwf|[lwf]|"
  "dbd|[dbd]|"                                              # the paper's: E_f 10 of 12, α 0.9
  "dbd-l3-h1|[dbd]|$D.lambda_in=3 $D.lambda_out=3 $D.half_life=1"   # fmnist-low's winner
  "dbd-h1|[dbd]|$D.half_life=1"
  "dbd-l3|[dbd]|$D.lambda_in=3 $D.lambda_out=3"
  "dbd-l10-h1|[dbd]|$D.lambda_in=10 $D.lambda_out=10 $D.half_life=1"
)

run_points "${POINTS[@]}"
[ "$SEED" = 0 ] && "$INSTIL" compare "$OUT"/*/ || true
