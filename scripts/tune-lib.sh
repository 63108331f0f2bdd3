# The loop shared by the sweeps of docs/tuning.md (sourced, not run). Each point is
# "name|methods|extra --set items (space-separated)"; it runs $PRESET (default fmnist-iil10)
# with order seed $SEED (default 0; another seed's point goes to $OUT/<name>-s<seed>), scored
# on a validation slice of 10% held out of the *training* data (validation_fraction), never
# on the test set. Resumable: a point whose results.json is complete is skipped, an
# interrupted one goes on (--resume). One point at a time: two torch runs on 2 cores slow
# each other several-fold.
INSTIL=${INSTIL:-.venv/bin/instil}
OUT=${OUT:-runs/tune}
PRESET=${PRESET:-configs/fmnist-iil10.yaml}
# method_budgets={}: a point sets its own budget; the preset's tuned budgets must not
# override it.
SEED=${SEED:-0}
COMMON=(--set "order_seeds=[$SEED]" --set validation_fraction=0.1 --set 'method_budgets={}'
        --no-progress)

# POINT_BASE: --set items every point starts from (a sweep's baseline, when the preset's
# own setting has since moved to the sweep's winner).
POINT_BASE=("${POINT_BASE[@]}")
# ONLY (names, space-separated) runs those points alone, e.g. a candidate on more seeds.
run_points() {
  local point name methods extra dir item
  for point in "$@"; do
    IFS='|' read -r name methods extra <<<"$point"
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    dir="$OUT/$name"
    [ "$SEED" = 0 ] || dir="$OUT/$name-s$SEED"
    if [ -f "$dir/results.json" ] && grep -q '"complete": true' "$dir/results.json"; then
      echo "skip $name (done)"; continue
    fi
    local sets=(--set "methods=$methods" "${POINT_BASE[@]}")
    for item in $extra; do sets+=(--set "$item"); done
    echo "== $name"
    # A point that fails (a refused or diverging setting) is a result too: say so, go on.
    "$INSTIL" run "$PRESET" --out "$dir" --resume "${COMMON[@]}" "${sets[@]}" \
      || echo "!! $name failed (exit $?): its log above says why"
  done
}
