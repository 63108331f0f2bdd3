#!/usr/bin/env bash
# The GPU checks, on a machine with no internet; only python3 with torch (>= 2.4) and pyyaml,
# numpy, tqdm, matplotlib are needed, no install.
#   bench/gpu.sh protocol   # (default) one order seed of cifar100-iil10 with finetune, lwf
#                           # and dbd, from M(0) to phase 10: CIFAR100_ROOT's cifar-100-python
#                           # folder, or one of random images in the official format
#   bench/gpu.sh speed      # instil bench speed on CIFAR-100-shaped images, bf16 +
#                           # channels_last, with and without torch.compile
# Results under $OUT (default runs/bench-gpu): the run folder (results.json, summary.md,
# epochs.jsonl; `instil run ... --resume` goes on from it) and the speed JSON files.
# The protocol is meant to finish within 10 minutes on one H100/H200 class GPU: it is
# stopped at 10 minutes either way, keeping what it finished.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/bench-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c 'import torch, sys; assert torch.cuda.is_available(), "no CUDA device"; \
print(torch.__version__, torch.cuda.get_device_name(0), file=sys.stderr)'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

FAST=(--set precision=bf16 --set channels_last=true)

protocol() {
  local root=${CIFAR100_ROOT:-}
  if [ -z "$root" ]; then
    root="$OUT/cifar100-random"
    [ -d "$root/cifar-100-python" ] || "$PYTHON" bench/cifar100-folder.py "$root"
  fi
  local start=$SECONDS status=0
  timeout 600 "$PYTHON" -m instil run configs/cifar100-iil10.yaml --out "$OUT/protocol" \
    --resume --no-progress --set "data.root=$root" --set 'order_seeds=[0]' \
    --set 'methods=[finetune, lwf, dbd]' --set device=cuda "${FAST[@]}" || status=$?
  echo "protocol: $((SECONDS - start)) s, exit $status (124: stopped at 10 minutes)"
  "$PYTHON" -m instil report "$OUT/protocol" || true
}

speed() {
  local common=(--preset configs/cifar100-iil10.yaml --device cuda --steps 60
                --set data.name=synthetic
                --set 'data.options={channels: 3, size: 32, num_classes: 100, n_train: 50000, n_test: 10000}'
                "${FAST[@]}")
  for compile in false true; do
    echo "== compile=$compile"
    timeout 300 "$PYTHON" -m instil bench speed "${common[@]}" --set compile=$compile \
      --json "$OUT/cifar100-bf16-compile-$compile.json"
  done
}

case "${1:-protocol}" in
  protocol) protocol ;;
  speed) speed ;;
  *) echo "usage: bench/gpu.sh [protocol|speed]" >&2; exit 2 ;;
esac
