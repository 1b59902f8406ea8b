#!/usr/bin/env bash
# GPU check for a lent device (one GPU; torch + CUDA, timm, onnx, onnxruntime; no internet), <= 8 min.
#
#   here:    python bench/gpu_check_prepare.py --data ../shared/data     # wheels + data -> .gpu-check/
#   device:  bash bench/gpu_check.sh                                      # carry: .gpu-check
#   CPU:     bash bench/gpu_check.sh --dry-run                            # syntax, recipe, inputs; no training
#
# 1. installs the carried wheels and `pip install --no-deps -e .`;
# 2. training compute throughput of the three founding members (random batch, bf16, channels_last);
# 3. `edgederm train bench/gpu-check.yaml`: ResNet-50, DenseNet-121, EfficientNet-B3, one epoch each
#    on the carried ISIC 2019 subset with bf16 AMP, channels_last and 8 loader workers -> card;
# 4. `edgederm distill` (Lite0 student, 1 epoch) and `edgederm export --target onnx` with its gate;
# 5. prints images/s per member (real data path vs compute only) and stage times.
# Outputs land in $OUT (the device tool's folder) or ./gpu-check-out.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
CARRY=${GPU_CHECK_DIR:-.gpu-check}
OUTDIR=${OUT:-gpu-check-out}
WORK=${GPU_CHECK_WORK:-/tmp/edgederm-gpu-check}
DATA=${EDGEDERM_DATA:-$CARRY/data}
mkdir -p "$OUTDIR"
step() { printf '\n== %s  (%ss)\n' "$1" "$SECONDS"; }

step "inputs"
[ -f "$DATA/isic2019/ISIC_2019_Training_GroundTruth.csv" ] \
  || { echo "gpu_check: no ISIC 2019 data at $DATA/isic2019 (run bench/gpu_check_prepare.py here, carry .gpu-check)"; exit 2; }
echo "data: $DATA/isic2019 ($(ls "$DATA/isic2019/ISIC_2019_Training_Input" | wc -l) images)"
if [ "$DRY" = 1 ]; then
  bash -n "$0"
  $PY - "$DATA" <<'PY'
import os, sys
os.environ["EDGEDERM_DATA"] = sys.argv[1]
from edgederm.train.config import load_recipe
cfg = load_recipe("bench/gpu-check.yaml")
print("recipe ok:", ", ".join(f"{m.model} x{m.epochs} ep" for m in cfg.members), f"| device {cfg.device}, amp {cfg.amp}, channels_last {cfg.channels_last}")
PY
  ls "$CARRY"/whl/*.whl >/dev/null 2>&1 && echo "wheels: $(ls "$CARRY"/whl/*.whl | wc -l)" || echo "wheels: none in $CARRY/whl (needed on the device only)"
  echo "dry run ok: would install, measure compute throughput, train, distil, export ONNX"
  exit 0
fi

step "install"
if ls "$CARRY"/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/edgederm-site "$CARRY"/whl/*.whl
  export PYTHONPATH=/tmp/edgederm-site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING" || true
EDGEDERM="$PY -m edgederm"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTDIR/gpu.txt"
$PY -c "import torch, timm, onnx, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| timm', timm.__version__, '| onnx', onnx.__version__, '| ort', onnxruntime.__version__)" | tee -a "$OUTDIR/gpu.txt"
rm -rf "$WORK"; mkdir -p "$WORK"

step "compute throughput (random batch 64, bf16, channels_last)"
$PY bench/train_throughput.py --device cuda --amp bf16 --channels-last --batch 64 --steps 20 --warmup 5 \
  --models resnet50,densenet121,efficientnet_b3 --json "$OUTDIR/throughput.json" 2>&1 | tee "$OUTDIR/throughput.log"

step "train (1 epoch per member, real data)"
T0=$SECONDS
EDGEDERM_DATA="$DATA" $EDGEDERM train bench/gpu-check.yaml --out "$WORK/runs" 2>&1 | tee "$OUTDIR/train.log"
TRAIN_S=$((SECONDS - T0))

step "distil (Lite0 student, 1 epoch)"
T0=$SECONDS
$EDGEDERM distill "$WORK/runs/gpu-check" --epochs 1 --batch-size 64 --device cuda 2>&1 | tee "$OUTDIR/distill.log"
DISTILL_S=$((SECONDS - T0))

step "export ONNX + gate"
T0=$SECONDS
set +e
$EDGEDERM export "$WORK/runs/gpu-check" --target onnx --min-class-support 2 2>&1 | tee "$OUTDIR/export.log"
EXPORT_RC=${PIPESTATUS[0]}
set -e
EXPORT_S=$((SECONDS - T0))

step "summary"
$PY - "$WORK/runs/gpu-check" "$OUTDIR" "$TRAIN_S" "$DISTILL_S" "$EXPORT_S" "$EXPORT_RC" <<'PY'
import json, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
train_s, distill_s, export_s, export_rc = (int(v) for v in sys.argv[3:7])
compute = {}
tp = out / "throughput.json"
if tp.exists():
    for r in json.loads(tp.read_text()).get("results", []):
        if "img_per_s" in r:
            compute[r["model"]] = r["img_per_s"]
rows = []
hist = run / "history.json"
for key, epochs in (json.loads(hist.read_text()) if hist.exists() else {}).items():
    model = key.split("-", 1)[-1]
    for h in epochs:
        if "train_images_per_s" in h:
            rows.append((model, h["epoch"], h["train_images_per_s"], h["seconds"], h.get("val_bacc")))
seen, lines = set(), ["| member | epoch | training images/s (real data, loader incl.) | compute-only images/s | epoch s (incl. val) |", "|---|---:|---:|---:|---:|"]
for model, epoch, ips, sec, bacc in rows:
    if (model, epoch) in seen:
        continue
    seen.add((model, epoch))
    c = compute.get(model)
    lines.append(f"| {model} | {epoch} | {ips:.0f} | {c:.0f} | {sec:.1f} |" if c else f"| {model} | {epoch} | {ips:.0f} | - | {sec:.1f} |")
lines.append(f"\nstages: train {train_s} s, distil {distill_s} s, export+gate {export_s} s (exit {export_rc})")
onnx = sorted(run.glob("**/export/onnx/*.onnx"))
lines.append(f"ONNX artifact: {onnx[0] if onnx else 'none'}")
text = "\n".join(lines)
print(text)
(out / "summary.md").write_text(text + "\n")
PY
echo "total ${SECONDS}s"
