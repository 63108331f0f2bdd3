#!/usr/bin/env bash
# instil as a user installs it: builds the wheel, installs it (not editable) into a new
# virtual environment and, from an empty folder, runs `instil list` and a short toy2d run by
# the preset's name. The dependencies (torch, ...) are not installed again: a .pth line puts
# .venv's site-packages behind the new environment's own (the .pth files there, such as the
# editable install of the checkout, are not read), and the checkout's src/ is on no path.
# Run by .ci/run after `make test`, which makes .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
base=$(cd "${VENV:-.venv}" && pwd)/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH
fail() { echo "check-wheel: $*" >&2; exit 1; }

"$base" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
"$base" -m venv --without-pip "$work/venv"
python=$work/venv/bin/python
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$base" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/zz-deps.pth"
"$base" -m pip --python "$python" install --quiet --no-deps "$work"/dist/instil-*.whl

mkdir "$work/empty" && cd "$work/empty"
where=$("$python" -c 'import instil; print(instil.__file__)')
[ "$where" = "$site/instil/__init__.py" ] || fail "instil imported from $where, not the wheel"
for file in py.typed data/imagenet100_wnids.txt integrations/avalanche.py; do
  [ -f "$site/instil/$file" ] || fail "the wheel lacks instil/$file"
done
"$work/venv/bin/instil" list > list.txt
grep -qF "presets ($site/instil/presets;" list.txt || fail "instil list: presets not from the wheel"
for preset in "$repo"/configs/*.yaml; do
  name=$(basename "$preset" .yaml)
  grep -qx "  $name" list.txt || fail "instil list does not show the preset $name"
done
INSTIL_CACHE="$work/cache" "$work/venv/bin/instil" run toy2d --out run --no-progress \
  --set 'order_seeds=[0]' --set 'methods=[finetune, dbd]' --set n_phases=2 \
  --set base.epochs=3 --set phase.epochs=2 --set method_options.dbd.freeze_epochs=1 \
  --set 'data.options={n_train: 600, n_test: 300}' > run.txt
grep -q '"complete": true' run/results.json || fail "the toy2d run did not complete"
[ -f run/summary.md ] || fail "the toy2d run wrote no summary.md"
echo "check-wheel: $(basename "$work"/dist/instil-*.whl) installed in a clean environment:" \
  "instil list shows $(ls "$repo"/configs/*.yaml | wc -l) presets, instil run toy2d completed"
