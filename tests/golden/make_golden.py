"""Regenerate ``preprocess.json`` — run by hand only when the preprocessing is meant to change.

    EDGEDERM_DATA=../shared/data python tests/golden/make_golden.py

The golden file pins the output of ``PreprocessSpec`` on real images (identified by file name and
SHA-256, never copied into the repository) and on a synthetic image the test can rebuild anywhere.
The Kotlin and JS demos read the same file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from edgederm.data.images import load_image  # noqa: E402
from edgederm.fsutil import sha256_file  # noqa: E402
from edgederm.preprocess import PreprocessSpec  # noqa: E402

REAL = [
    "ham10000/HAM10000_images_part_1/ISIC_0024327.jpg",
    "isic2019/ISIC_2019_Training_Input/ISIC_0000045_downsampled.jpg",
    "ph2/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.jpg",
]
SPECS = {
    "shorter224": PreprocessSpec(input_size=(224, 224)),
    "stretch96_bicubic_nhwc": PreprocessSpec(input_size=(96, 96), resize="stretch", interpolation="bicubic", layout="NHWC"),
    "pad128_bgr": PreprocessSpec(input_size=(128, 128), resize="pad", channel_order="BGR"),
    "int8_64": PreprocessSpec(input_size=(64, 64), dtype="int8", input_scale=0.0186, input_zero_point=-14, layout="NHWC"),
}
GRID = 8


def synthetic_image() -> np.ndarray:
    """A deterministic 300x200 RGB test card (gradients + a disc), no RNG involved."""
    h, w = 200, 300
    yy, xx = np.mgrid[0:h, 0:w]
    r = (xx * 255 // (w - 1)).astype(np.uint8)
    g = (yy * 255 // (h - 1)).astype(np.uint8)
    b = (((xx // 10 + yy // 10) % 2) * 200 + 30).astype(np.uint8)
    img = np.stack([r, g, b], -1)
    disc = (xx - 160) ** 2 + (yy - 90) ** 2 < 60**2
    img[disc] = (90, 40, 20)
    return img


def sample(x: np.ndarray, layout: str) -> dict:
    x = np.asarray(x, dtype=np.float64)
    hwc = np.moveaxis(x, 0, -1) if layout == "NCHW" else x
    h, w = hwc.shape[:2]
    ys = np.linspace(0, h - 1, GRID).round().astype(int)
    xs = np.linspace(0, w - 1, GRID).round().astype(int)
    return {
        "shape": list(x.shape),
        "rows": ys.tolist(),
        "cols": xs.tolist(),
        "values": hwc[np.ix_(ys, xs)].tolist(),
        "channel_mean": hwc.reshape(-1, 3).mean(0).tolist(),
        "channel_std": hwc.reshape(-1, 3).std(0).tolist(),
    }


def main() -> None:
    from PIL import Image

    root = Path(os.environ.get("EDGEDERM_DATA", HERE.parents[2] / "shared" / "data"))
    out = {"specs": {k: s.to_dict() for k, s in SPECS.items()}, "grid": GRID, "images": []}
    sources = [("synthetic", None, Image.fromarray(synthetic_image()))]
    sources += [(rel, sha256_file(root / rel), load_image(root / rel)) for rel in REAL]
    for rel, digest, img in sources:
        entry = {"image": rel, "sha256": digest, "size": list(img.size), "outputs": {}}
        for key, spec in SPECS.items():
            entry["outputs"][key] = sample(spec.apply(img), spec.layout)
        out["images"].append(entry)
    (HERE / "preprocess.json").write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", HERE / "preprocess.json")


if __name__ == "__main__":
    main()
