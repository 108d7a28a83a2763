#!/usr/bin/env bash
# GPU check (issues 9, 25), one prepared script: the `triton` back-end's exactness on the device, then
# layer and model benchmarks in bf16 at batch 64, 224 px (3D: 96^3, batch 8), then decode throughput
# with all CPU cores. Prints hybrid/plain ratios, the speed-up over the per-sample loop, the `auto`
# choices (tuned on CUDA, the loop and triton among the candidates), one optimiser step per fusion
# variant (the seed's loop in the same layers included) with projected minutes per CelebA epoch.
# Each part has its own time limit (under 8 minutes in all); a part that fails or times out is
# reported and the rest still run. Installs nothing (needs a Python with torch, torchvision and this
# repository's dependencies; set PY to choose it). JSON records go to $OUT (default ./gpu-check),
# gathered at the end into $OUT/gpu-check.json with each part's exit status.
#   bash benchmarks/gpu_check.sh            # on a machine with a CUDA device
#   DRY=1 bash benchmarks/gpu_check.sh      # the same parts on the CPU at tiny sizes (checks the script)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-gpu-check}
DRY=${DRY:-0}
mkdir -p "$OUT"
declare -A STATUS
SCALE=1  # the dry run's CPU interpreter and CPU steps are slower: its limits are 5x
[ "$DRY" = 1 ] && SCALE=5
part() { local name=$1 limit=$(($2 * SCALE)); shift 2; timeout "$limit" "$@"; local rc=$?; STATUS[$name]=$rc
         [ "$rc" = 0 ] || echo "!! part '$name' exited $rc$([ "$rc" = 124 ] && echo " (over its ${limit}s limit)")"; }

echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
if [ "$DRY" = 1 ]; then
    echo "== DRY run on the CPU at tiny sizes: checks the script end to end, measures nothing of interest"
    DEV=cpu; L2="--size 16 --batch 4"; L3="--size3d 8 --batch3d 2 --shapes 64->64,128->128,1->64"
    M2="--model-size 32 --model-batch 4"; M3="--model-size3d 16 --model-batch3d 2"
    VGG=vgg-mini; OTHERS=resnet18; VOL=resnet3d-compact; DATA="--images 64 --sizes 64 --cores 1"
    TRITON=(env TRITON_INTERPRET=1 "$PY" benchmarks/triton_check.py --device cpu --dry --batch 3)
else
    "$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1
    DEV=cuda; L2="--size 224 --batch 64"; L3="--size3d 96 --batch3d 8"
    M2="--model-size 224 --model-batch 64"; M3="--model-size3d 96 --model-batch3d 8"
    VGG=vgg16_bn; OTHERS=resnet50; VOL=monai-resnet18; DATA="--images 1024 --sizes 224 --cores 1,$(nproc)"
    TRITON=("$PY" benchmarks/triton_check.py --device cuda)
fi

echo "== triton: the implicit-GEMM back-end against the per-sample loop on this device (fp32 exact, bf16)"
part triton 60 "${TRITON[@]}"

echo "== layers: VGG16 and ResNet-50 shapes, 3D ResNet shapes, K=3 (ratio to the plain conv; loop / auto = speed-up over the per-sample loop)"
part layers 180 "$PY" -m covfuse.cli bench layers --overwrite --device $DEV --nets vgg16,resnet50,resnet3d $L2 $L3 --k 3 --kinds binary,continuous \
    --rounds 3 --json "$OUT/layers.json"

echo "== models: one optimiser step of $VGG, every variant (loop rows: the seed's per-sample loop in the same layers), channels_last"
part models-vgg 90 "$PY" -m covfuse.cli bench models --overwrite --device $DEV --backbones $VGG $M2 --channels-last --rounds 3 --json "$OUT/models.json"

echo "== models: $OTHERS and $VOL, hybrid all, the peers and the loop"
part models-others 70 "$PY" -m covfuse.cli bench models --overwrite --device $DEV --backbones $OTHERS,$VOL $M2 $M3 --channels-last --rounds 3 \
    --variants "image-only,hybrid all K=3,loop all K=3,film K=3,daft K=3,tab-attention K=3,cond-norm K=3,hyper K=3" \
    --json "$OUT/models-others.json"

echo "== data: decode + loader throughput"
part data 40 "$PY" -m covfuse.cli bench data --overwrite $DATA --rounds 2 --json "$OUT/data.json"

"$PY" - "$OUT" "${STATUS[triton]}" "${STATUS[layers]}" "${STATUS[models-vgg]}" "${STATUS[models-others]}" "${STATUS[data]}" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
names = ["triton", "layers", "models-vgg", "models-others", "data"]
record = {"exit_status": dict(zip(names, map(int, sys.argv[2:])))}
for name in ("layers", "models", "models-others", "data"):
    path = out / f"{name}.json"
    record[name] = json.loads(path.read_text()) if path.exists() else None
(out / "gpu-check.json").write_text(json.dumps(record, indent=1) + "\n")
print("== parts:", ", ".join(f"{k} {'ok' if v == 0 else f'FAILED ({v})'}" for k, v in record["exit_status"].items()))
EOF
echo "== done; records in $OUT/ (gpu-check.json gathers them)"
