"""Golden vectors for the Kotlin core of ``android-demo/``: what the phone must reproduce.

``write_golden(artifact, images, out_dir)`` runs an artifact through ``edgederm.runtime.load`` on a
few real images and writes everything the app computes on its own, so the Kotlin tests can check
each step against Python on the same pixels:

- ``<img>.rgb``: the decoded RGB uint8 pixels (row-major, interleaved). Golden vectors start from
  *decoded* pixels because libjpeg (Pillow) and Android's ``BitmapFactory`` may decode the same
  JPEG a grey level apart; everything after decoding must agree.
- ``<img>.<spec>.f32``: the full model input for the card's spec and for a set of extra specs
  covering every resize mode, filter, channel order, layout and dtype (values as little-endian
  float32; integer and float16 inputs are exact in float32).
- ``<img>.view.<view>.f32`` + raw outputs: the input and the model's raw outputs for each TTA view
  of the card, then the view-averaged probabilities and the decided class from the Python runtime.
- ``decision_cases``: random probability vectors with ``decide`` results under the card's rule and
  under a synthetic ``priority_thresholds`` rule.
- ``card.json``: the artifact's card, and for ``.tflite`` artifacts ``model.tflite`` (the app reads
  the embedded card itself); ``golden.json`` indexes all of it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..card import ArtifactCard
from ..data.images import load_image
from ..decision import decide
from ..errors import EdgedermError
from ..fsutil import sha256_file
from ..preprocess import PreprocessSpec
from ..tta import apply_view

log = logging.getLogger(__name__)

GOLDEN_VERSION = 1

#: Extra specs so every preprocessing path of the Kotlin core is compared with Python on real
#: pixels (the variety of tests/golden/make_golden.py plus the remaining filters and dtypes).
EXTRA_SPECS: dict[str, PreprocessSpec] = {
    "shorter224": PreprocessSpec(input_size=(224, 224)),
    "stretch96_bicubic_nhwc": PreprocessSpec(input_size=(96, 96), resize="stretch", interpolation="bicubic", layout="NHWC"),
    "pad128_bgr": PreprocessSpec(input_size=(128, 128), resize="pad", channel_order="BGR"),
    "int8_64": PreprocessSpec(input_size=(64, 64), dtype="int8", input_scale=0.0186, input_zero_point=-14, layout="NHWC"),
    "lanczos_48x80_crop95": PreprocessSpec(input_size=(48, 80), crop_pct=0.95, interpolation="lanczos"),
    "nearest_pad_grey_60x40": PreprocessSpec(input_size=(60, 40), resize="pad", interpolation="nearest", pad_value=(128, 64, 32)),
    "uint8_stretch_33": PreprocessSpec(input_size=(33, 33), resize="stretch", dtype="uint8", input_scale=0.02, input_zero_point=120),
    "fp16_bicubic_40": PreprocessSpec(input_size=(40, 40), interpolation="bicubic", dtype="float16", layout="NHWC"),
}

#: A priority rule that exercises what a calibrated card can hold: a priority order different from
#: the thresholds' key order and a priority entry without a threshold (skipped, as in Python).
SYNTHETIC_DECISION_THRESHOLDS = (0.35, 0.25, 0.5)


def _f32(path: Path, x: np.ndarray) -> str:
    np.ascontiguousarray(x, dtype="<f4").tofile(path)
    return path.name


def _synthetic_decision(classes: Sequence[str]) -> dict[str, Any]:
    names = list(classes)
    picks = [names[0], names[min(3, len(names) - 1)], names[-1]]
    thresholds = {c: t for c, t in zip(picks, SYNTHETIC_DECISION_THRESHOLDS)}
    priority = list(reversed(list(thresholds)))
    if len(names) > 1 and names[1] not in thresholds:
        priority.insert(1, names[1])
    return {"rule": "priority_thresholds", "thresholds": thresholds, "priority": priority}


def _decision_cases(classes: Sequence[str], decisions: dict[str, dict[str, Any]], n: int, seed: int) -> dict[str, Any]:
    """Random probability vectors (plus exact-threshold and tie cases) and ``decide`` on them."""
    rng = np.random.default_rng(seed)
    C = len(classes)
    probs = [rng.dirichlet(np.full(C, 0.5)) for _ in range(n)]
    probs.append(np.full(C, 1.0 / C))  # an all-way tie: argmax takes the first class
    for rule in decisions.values():
        for name, t in rule.get("thresholds", {}).items():
            if name in classes:
                p = np.full(C, (1.0 - t) / max(C - 1, 1))
                p[list(classes).index(name)] = t  # exactly at the threshold: it fires (>=)
                probs.append(p)
    arr = np.asarray(probs, dtype=np.float64)
    return {
        "probs": arr.tolist(),
        "rules": {key: {"decision": rule, "expected": decide(arr, classes, rule).tolist()} for key, rule in decisions.items()},
    }


def write_golden(artifact: Path, images: list[Path], out_dir: Path, *, decision_cases: int = 200, seed: int = 0) -> Path:
    """Write golden vectors for ``artifact`` on ``images`` into ``out_dir``; returns golden.json.

    The artifact must have one input pipeline (one spec) and no segmentation stage: that is what
    the Android app runs.
    """
    from ..runtime import load

    artifact, out_dir = Path(artifact), Path(out_dir)
    if not images:
        raise EdgedermError("golden vectors need at least one image")
    pred = load(artifact)
    card: ArtifactCard = pred.card
    heads = pred.heads()
    if len(heads) != 1 or card.model.get("segmenter") or card.model.get("combine") == "logit_stacking":
        raise EdgedermError(f"{artifact.name}: the Android demo runs single-input classifiers without segmenter or stacker")
    spec = heads[0].spec
    views = pred.views(None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "card.json").write_text(card.to_json() + "\n", encoding="utf-8")
    model_copy = None
    if pred.format == "tflite":  # the app reads the card from the model's metadata itself
        model_copy = "model.tflite"
        shutil.copyfile(artifact, out_dir / model_copy)

    specs = {"card": spec, **EXTRA_SPECS}
    entries = []
    for i, src in enumerate(images):
        img = load_image(src)  # full resolution, no JPEG draft: the app starts from these pixels
        rgb = np.asarray(img, dtype=np.uint8)
        name = f"img{i}"
        entry: dict[str, Any] = {
            "name": name,
            "source": Path(src).name,
            "sha256": sha256_file(src),
            "width": img.width,
            "height": img.height,
            "rgb": name + ".rgb",
            "inputs": {},
            "views": {},
        }
        rgb.tofile(out_dir / entry["rgb"])
        for key, s in specs.items():
            entry["inputs"][key] = _f32(out_dir / f"{name}.{key}.f32", s.apply(img))
        geo = spec.geometric(img)
        for view in views:
            x = spec.finalize(spec.normalize(np.asarray(apply_view(view, geo, spec))))
            raw = pred.forward(x[None])[0]
            entry["views"][view] = {
                "input": _f32(out_dir / f"{name}.view.{view}.f32", x),
                "raw": np.asarray(raw, np.float64).tolist(),
                "probabilities": pred.to_probabilities(raw[None])[0].tolist(),
            }
        probs = pred.predict_proba([img], tta=None)
        entry["probabilities"] = probs[0].tolist()
        entry["decision"] = int(pred.decide(probs)[0])
        entry["decision_class"] = card.classes[entry["decision"]]
        entries.append(entry)

    decisions = {"card": card.decision, "synthetic": _synthetic_decision(card.classes)}
    index = {
        "version": GOLDEN_VERSION,
        "card": "card.json",
        "model": model_copy,
        "expected_card": {
            "name": card.name,
            "classes": list(card.classes),
            "output": card.model.get("output", "logits"),
            "tta_views": list(views),
            "decision_rule": card.decision.get("rule", "argmax"),
        },
        "specs": {k: s.to_dict() for k, s in specs.items()},
        "images": entries,
        "decision_cases": _decision_cases(card.classes, decisions, decision_cases, seed),
    }
    path = out_dir / "golden.json"
    path.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    log.info("wrote golden vectors for %d images to %s", len(entries), out_dir)
    return path
