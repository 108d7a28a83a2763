#!/usr/bin/env bash
# GPU check (issue 9): layer and model benchmarks on a CUDA device in bf16 at batch 64, 224 px, then
# decode throughput with all CPU cores. Prints hybrid/plain ratios, the speed-up over the per-sample
# loop, the `auto` choices (tuned on CUDA), projected minutes per CelebA epoch (162,770 images) for
# vgg16_bn image-only and hybrid. About 5 minutes; installs nothing (needs a Python with torch,
# torchvision and this repository's dependencies; set PY to choose it). JSON records go to $OUT
# (default ./gpu-check). Run from anywhere:  bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
bench() { local limit=$1; shift; timeout "$limit" "$PY" -m covfuse.cli bench "$@" --overwrite; }

echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1

echo "== layers: VGG16 and ResNet-50 shapes at 224 px, batch 64, bf16 autocast, K=3 (ratio to nn.Conv2d; loop / auto = speed-up over the per-sample loop)"
bench 150 layers --device cuda --dtypes bfloat16 --batch 64 --size 224 --nets vgg16,resnet50,resnet3d \
    --size3d 96 --batch3d 8 --k 3 --kinds binary,continuous --rounds 3 --json "$OUT/layers.json"

echo "== models: one optimiser step of vgg16_bn at 224 px, batch 64, bf16 autocast, channels_last"
bench 110 models --device cuda --backbones vgg16_bn --model-size 224 --model-batch 64 --rounds 3 \
    --json "$OUT/models.json"

echo "== data: decode + loader throughput at 224 px with all $(nproc) CPU cores (and 1 for scale)"
bench 60 data --sizes 224 --cores "1,$(nproc)" --images 1024 --rounds 2 --json "$OUT/data.json"

echo "== done; records in $OUT/"
