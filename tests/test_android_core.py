"""The Android app's pure-Kotlin core agrees with the Python runtime on real images.

A tiny small_cnn is exported to LiteRT with a card that carries a ``priority_thresholds`` rule and
several TTA views; ``edgederm.demo.golden.write_golden`` runs it through ``edgederm.runtime.load``
on real dermoscopy images and writes decoded pixels, model inputs for the card's and extra specs,
raw outputs, probabilities and decisions. ``android-demo/core/run-tests.sh`` compiles the Kotlin
core and its test runner with kotlinc and checks every one of them (preprocessing, TTA views,
softmax, decision rule, card parsing), ending with ``N passed, M failed``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

RUN_TESTS = REPO / "android-demo" / "core" / "run-tests.sh"
JSON_JARS = ("/usr/share/java/json-android.jar", "/usr/share/java/com.android.json.jar")
INSTALL = "apt-get install -y --no-install-recommends kotlin libandroid-json-java"
REAL = [
    "ham10000/HAM10000_images_part_1/ISIC_0024327.jpg",
    "isic2019/ISIC_2019_Training_Input/ISIC_0000045_downsampled.jpg",
    "ph2/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.jpg",
]
SIZE = 32
HEAD_GAIN = 300.0
VIEWS = ["identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse", "zoom90", "zoom80"]
MIN_CHECKS = 110  # per image 9 specs + 10 views x 2 + 5, plus card/decision/self checks: 124 now


def _missing_toolchain() -> str | None:
    if shutil.which(os.environ.get("KOTLINC", "kotlinc")) is None or shutil.which("java") is None:
        return "kotlinc/java not found"
    if os.environ.get("EDGEDERM_ANDROID_JSON_JAR"):
        return None
    if not any(Path(j).exists() for j in JSON_JARS):
        return "Android's org.json jar (libandroid-json-java) not found"
    return None


@pytest.fixture(scope="module")
def toolchain() -> None:
    why = _missing_toolchain()
    if why is None:
        return
    if os.environ.get("EDGEDERM_REQUIRE_DEMOS") == "1":
        pytest.fail(f"{why}; EDGEDERM_REQUIRE_DEMOS=1 requires it: {INSTALL}")
    pytest.skip(f"{why}: {INSTALL}")


def _images(data_root: Path) -> list[Path]:
    images = [data_root / rel for rel in REAL]
    missing = [str(p) for p in images if not p.exists()]
    if missing:
        pytest.skip(f"real images absent: {missing}")
    return images


@pytest.fixture(scope="module")
def golden(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LiteRT artifact whose card's thresholds make the rule take all three branches."""
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed: pip install 'edgederm[tflite]'")
    pytest.importorskip("litert_torch", reason="litert-torch is not installed: pip install 'edgederm[tflite]'")
    import torch

    from edgederm.checkpoint import load_checkpoint
    from edgederm.data.images import load_image
    from edgederm.demo.golden import write_golden
    from edgederm.formats.tflite.export import export_tflite
    from edgederm.runtime import load
    from edgederm.card import embed_card
    from helpers import tiny_checkpoint

    images = _images(data_root)
    tmp = tmp_path_factory.mktemp("android")
    members, card = load_checkpoint(tiny_checkpoint(tmp / "m.pt", size=SIZE))
    model = members[0].build()
    with torch.no_grad():  # a fresh net is nearly constant on photos: spread its logits out
        model.head[-1].weight.mul_(HEAD_GAIN)
    path = tmp / "m.tflite"
    export_tflite(model, torch.zeros(1, 3, SIZE, SIZE), path)
    card.tta = {"views": list(VIEWS)}
    card.describe_artifact(path, fmt="tflite", precision="fp32")
    embed_card(path, card)

    # Thresholds from the runtime's own probabilities: MEL fires on one image, AKIEC (second in
    # priority) on another, the third falls back to argmax.
    probs = load(path).predict_proba([load_image(p) for p in images])
    mel, akiec = card.classes.index("MEL"), card.classes.index("AKIEC")
    order = np.argsort(-probs[:, mel])
    t_mel = float(probs[order[:2], mel].mean())
    rest = order[1:][np.argsort(-probs[order[1:], akiec])]
    t_akiec = float(probs[rest[:2], akiec].mean())
    card.decision = {"rule": "priority_thresholds", "thresholds": {"MEL": t_mel, "AKIEC": t_akiec},
                     "priority": ["MEL", "AKIEC"], "fallback_fired": None}
    embed_card(path, card)
    out = tmp_path_factory.mktemp("golden")
    write_golden(path, images, out)
    return out


def test_golden_vectors_are_consistent(golden: Path) -> None:
    """The Python side of the contract: what the Kotlin runner reads is what the runtime does."""
    from edgederm.card import load_card
    from edgederm.preprocess import PreprocessSpec

    index = json.loads((golden / "golden.json").read_text())
    card = load_card(golden / "card.json")
    assert card.decision["rule"] == "priority_thresholds" and index["expected_card"]["tta_views"] == VIEWS
    for entry in index["images"]:
        rgb = np.fromfile(golden / entry["rgb"], dtype=np.uint8)
        assert rgb.size == entry["width"] * entry["height"] * 3 and rgb.std() > 10
        for key, name in entry["inputs"].items():
            spec = PreprocessSpec.from_dict(index["specs"][key])
            x = np.fromfile(golden / name, dtype="<f4")
            assert x.size == spec.height * spec.width * 3
        assert abs(sum(entry["probabilities"]) - 1) < 1e-9
    # The real images take every branch of the rule: MEL by threshold, AKIEC by threshold, argmax.
    probs = np.asarray([e["probabilities"] for e in index["images"]])
    t = card.decision["thresholds"]
    mel, akiec = card.classes.index("MEL"), card.classes.index("AKIEC")
    branch = ["MEL" if p[mel] >= t["MEL"] else "AKIEC" if p[akiec] >= t["AKIEC"] else "argmax" for p in probs]
    assert sorted(branch) == ["AKIEC", "MEL", "argmax"]
    for e, b, p in zip(index["images"], branch, probs):
        assert e["decision"] == (int(p.argmax()) if b == "argmax" else card.classes.index(b))
    assert probs.std(0).max() > 1e-3  # the images do get different outputs
    # The random vectors exercise both outcomes of each rule too.
    cases = index["decision_cases"]
    argmax = np.asarray(cases["probs"]).argmax(1)
    for rule in cases["rules"].values():
        expected = np.asarray(rule["expected"])
        assert 0 < (expected != argmax).sum() < len(expected)


def test_kotlin_core_matches_python(toolchain: None, golden: Path) -> None:
    proc = subprocess.run(["bash", str(RUN_TESTS), str(golden)], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    m = re.fullmatch(r"(\d+) passed, (\d+) failed", last)
    assert m, f"no closing 'N passed, M failed' line:\n{out[-4000:]}"
    passed, failed = int(m[1]), int(m[2])
    assert failed == 0 and proc.returncode == 0, out[-4000:]
    assert passed >= MIN_CHECKS, out[-4000:]
