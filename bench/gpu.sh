#!/usr/bin/env bash
# Speed on a GPU machine with no internet: CIFAR-100-shaped synthetic images (50,000 + 10,000,
# 3x32x32, 100 classes) through the cifar100-iil10 preset's ResNet-18, bf16 + channels_last,
# with and without torch.compile. Prints the ceiling, finetune and dbd images/s and an
# estimate of the whole cifar100-iil10 protocol (finetune, dbd, joint, 5 order seeds).
# Needs only python3 with torch (>= 2.4) and pyyaml, numpy, tqdm, matplotlib; no install.
#   bench/gpu.sh                 # figures to stdout and to $OUT (default: runs/bench-gpu)
# Sized to finish in well under 8 minutes on one H100 (most of it is compilation).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/bench-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c 'import torch, sys; assert torch.cuda.is_available(), "no CUDA device"; \
print(torch.__version__, torch.cuda.get_device_name(0), file=sys.stderr)'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

COMMON=(--preset configs/cifar100-iil10.yaml --device cuda --steps 60
        --set data.name=synthetic
        --set 'data.options={channels: 3, size: 32, num_classes: 100, n_train: 50000, n_test: 10000}'
        --set precision=bf16 --set channels_last=true)
for compile in false true; do
  echo "== compile=$compile"
  timeout 300 "$PYTHON" -m instil bench speed "${COMMON[@]}" --set compile=$compile \
    --json "$OUT/cifar100-bf16-compile-$compile.json"
done
