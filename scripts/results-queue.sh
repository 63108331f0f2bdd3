#!/usr/bin/env bash
# A preset's 5-seed tables as a queue of (stage, order seed) jobs, resumable, that two copies
# of the script (one thread each) share; called by results-fmnist-tuned.sh and
# results-fmnist-low.sh, which set:
#   PRESET  the config;  OUT  the run folders' parent (one folder s<seed> per order seed);
#   M0_DIR  where the M(0)s are kept in the repository;  CORE, REST  the methods of the
#   two stages (CORE starts with finetune, which trains M(0) when the cache lacks it).
#
# Why the M(0)s are kept: a paired comparison needs one M(0) per order seed, and an M(0)
# retrained on another machine is not the same model (torch's sums depend on the CPU's
# instruction set and the thread count), so runs of a later session could not be joined to
# earlier ones (`run --resume` and `merge` refuse). The M(0)s (330 kB each for resnet_small)
# are put into the cache before every job, and a seed's newly trained M(0) is copied to
# M0_DIR as soon as its log names it.
#
# A job runs `instil run --resume` on the seed's folder (a finished pair is kept, an
# interrupted one goes on); first CORE on every seed, then CORE + REST. A folder that the
# other copy is writing is refused at once (one writer per run folder) and this copy moves
# on to the next job. Each seed's log is $OUT/s<seed>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
INSTIL=${INSTIL:-.venv/bin/instil}
: "${PRESET:?}" "${OUT:?}" "${M0_DIR:?}" "${CORE:?}" "${REST:?}"
CACHE=${INSTIL_CACHE:-$HOME/.cache/instil}
SEEDS=${*:-0 1 2 3 4}
mkdir -p "$CACHE/base" "$M0_DIR" "$OUT"

keep_m0() {  # the M(0)s (shared and podnet-lsc's) a seed's log names as cached
  grep -o 'cached as [^ ]*\.pt' "$1" 2>/dev/null | while read -r _ _ path; do
    [ -e "$M0_DIR/${path##*/}" ] || cp "$path" "$M0_DIR/"
  done
}

job() {  # order seed, methods
  local log="$OUT/s$1.log"
  cp -n "$M0_DIR"/*.pt "$CACHE/base/" 2>/dev/null
  "$INSTIL" run "$PRESET" --out "$OUT/s$1" --resume --no-progress \
    --set "order_seeds=[$1]" --set "methods=[$2]" >> "$log" 2>&1 &
  local pid=$!
  # Keep the M(0)s as soon as they are cached, not only when the run ends.
  while kill -0 $pid 2>/dev/null; do sleep 30; keep_m0 "$log"; done
  wait $pid
  local rc=$?
  keep_m0 "$log"
  if [ $rc -ne 0 ]; then
    echo "order seed $1 [$2]: exit $rc: $(grep '^instil: error' "$log" | tail -n 1)" >&2
  fi
}

for methods in "$CORE" "$CORE, $REST"; do
  for seed in $SEEDS; do job "$seed" "$methods"; done
done
