"""LiteRT export (litert-torch FP32, FP16 weights, full-integer INT8) and the ``tflite`` backend.

A tiny small_cnn (randomised BN) is converted at each precision; the card is embedded in the
flatbuffer's ``metadata`` table, the file is opened by ``edgederm.runtime.load`` and must agree
with PyTorch on the same images through the same ``PreprocessSpec``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed: pip install 'edgederm[tflite]'")
pytest.importorskip("litert_torch", reason="litert-torch is not installed: pip install 'edgederm[tflite]'")

from edgederm.card import EMBED_KEY, ArtifactCard, load_card, sidecar_path  # noqa: E402
from edgederm.checkpoint import load_checkpoint  # noqa: E402
from edgederm.errors import CardError, EdgedermError, MissingExtraError  # noqa: E402
from edgederm.formats.tflite.export import export_tflite  # noqa: E402
from edgederm.runtime import load  # noqa: E402
from edgederm.card import embed_card, read_embedded_card  # noqa: E402
from edgederm.formats.tflite.runtime import TFLitePredictor  # noqa: E402

from helpers import HAM7, tiny_card, tiny_checkpoint, natural_images  # noqa: E402

SIZE = 32
INT8_MIN_AGREEMENT = 0.85  # argmax agreement with FP32 on natural-ish images (measured: 0.95-1.0)
INT8_MIN_COSINE = 0.9  # mean per-image cosine of centred logits (measured: > 0.99)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _centred_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, ArtifactCard]:
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("tfl") / "m.pt", size=SIZE)
    members, card = load_checkpoint(ckpt)
    return ckpt, members[0].build(), card


@pytest.fixture(scope="module")
def fp32_file(tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    _, model, _ = tiny
    out = tmp_path_factory.mktemp("fp32") / "m.tflite"
    return out, export_tflite(model, torch.zeros(1, 3, SIZE, SIZE), out)


def _finish(path: Path, card: ArtifactCard, precision: str) -> ArtifactCard:
    """What the export driver does: describe and embed the card; no sidecar (embedded must do)."""
    c = card.copy()
    c.describe_artifact(path, fmt="tflite", precision=precision)
    embed_card(path, c)
    assert not sidecar_path(path).exists()
    return c


def _metadata_names(path: Path) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    return [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]


def test_fp32_roundtrip_and_embedded_card(tiny, fp32_file, tmp_path: Path) -> None:
    ckpt, _, card = tiny
    src, info = fp32_file
    path = tmp_path / src.name
    path.write_bytes(src.read_bytes())
    assert info["precision"] == "fp32" and info["input"] == {"dtype": "float32", "shape": [1, 3, SIZE, SIZE]}
    before = _metadata_names(path)
    assert read_embedded_card(path) is None
    _finish(path, card, "fp32")
    assert _metadata_names(path) == before + [EMBED_KEY]  # the converter's own entries are kept
    back = load_card(path)
    assert back.classes == HAM7 and back.artifact["format"] == "tflite" and back.artifact["precision"] == "fp32"

    imgs = natural_images(12, seed=3)
    pred = load(path, threads=1)
    assert isinstance(pred, TFLitePredictor) and pred.input_quantization is None
    p_tfl = pred.predict_proba(imgs, batch_size=5)  # batches of 5 and 2: the input is resized
    assert np.abs(p_tfl - load(ckpt).predict_proba(imgs)).max() <= 1e-4

    # Re-embedding replaces the card instead of adding a second one; the model is unchanged.
    c = back.copy()
    c.name = "renamed"
    embed_card(path, c)
    assert _metadata_names(path).count(EMBED_KEY) == 1 and read_embedded_card(path).name == "renamed"
    np.testing.assert_array_equal(load(path).predict_proba(imgs, batch_size=5), p_tfl)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]  # atomic: no temp files left


def test_fp16_weights(tiny, tmp_path: Path, fp32_file) -> None:
    ckpt, model, card = tiny
    path = tmp_path / "h.tflite"
    info = export_tflite(model, torch.zeros(1, 3, SIZE, SIZE), path, precision="fp16")
    assert info["precision"] == "fp16" and info["input"]["dtype"] == "float32"
    assert info["size_bytes"] < 0.75 * fp32_file[1]["size_bytes"]  # the conv/linear weights are half size
    _finish(path, card, "fp16")
    imgs = natural_images(12, seed=5)
    err = float(np.abs(load(path).predict_proba(imgs) - load(ckpt).predict_proba(imgs)).max())
    assert 1e-8 < err <= 1e-2


def test_int8_full_integer(tiny, tmp_path: Path) -> None:
    ckpt, model, card = tiny
    calib = natural_images(48, seed=1)
    batches = [card.preprocessing.batch(calib[i : i + 8]) for i in range(0, 48, 8)]
    path = tmp_path / "q.tflite"
    info = export_tflite(model, torch.zeros(1, 3, SIZE, SIZE), path, precision="int8", calibration=batches, subset_size=40)
    assert info["recipe"] == "static_wi8_ai8" and info["calibration_samples"] == 40
    # Full integer: INT8 input and output tensors with their quantization parameters.
    assert info["input"]["dtype"] == "int8" and info["input"]["scale"] > 0
    assert info["output"]["dtype"] == "int8"
    _finish(path, card, "int8")
    assert load_card(path).preprocessing.dtype == "float32"  # the card keeps float NCHW input

    pred = load(path, threads=1)
    assert pred.input_quantization == (pytest.approx(info["input"]["scale"]), info["input"]["zero_point"])
    x = card.preprocessing.batch(natural_images(64, seed=7))
    q_logits = pred.forward(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    agreement = float((q_logits.argmax(1) == ref.argmax(1)).mean())
    cosine = _centred_cosine(q_logits, ref)
    print(f"tflite int8: argmax agreement {agreement:.3f}, cosine {cosine:.4f}")
    assert agreement >= INT8_MIN_AGREEMENT and cosine >= INT8_MIN_COSINE
    assert not np.allclose(q_logits, ref, atol=1e-5)
    probs = pred.predict_proba(natural_images(5, seed=9))
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)


class _FixedBatch(torch.nn.Module):
    """A model with a batch size baked into a reshape: the input cannot be resized."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc(y.reshape(1, 64))


def test_fixed_batch_model_runs_in_chunks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = _FixedBatch().eval()
    path = tmp_path / "fixed.tflite"
    export_tflite(model, torch.zeros(1, 3, SIZE, SIZE), path)
    card = tiny_card(size=SIZE)
    _finish(path, card, "fp32")
    x = card.preprocessing.batch(natural_images(5, seed=2))
    with caplog.at_level("INFO", logger="edgederm.formats.tflite.runtime"):
        out = load(path).forward(x)
    assert "running in chunks" in caplog.text
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(x[i : i + 1])).numpy() for i in range(5)])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_errors_are_one_line(tiny, tmp_path: Path, fp32_file, monkeypatch: pytest.MonkeyPatch) -> None:
    _, model, _ = tiny
    x = torch.zeros(1, 3, SIZE, SIZE)
    with pytest.raises(EdgedermError, match="needs a calibration set"):
        export_tflite(model, x, tmp_path / "q.tflite", precision="int8")
    with pytest.raises(EdgedermError, match="calibration set is empty"):
        export_tflite(model, x, tmp_path / "q.tflite", precision="int8", calibration=[])
    with pytest.raises(EdgedermError, match="unknown TFLite precision"):
        export_tflite(model, x, tmp_path / "q.tflite", precision="int4")
    assert not (tmp_path / "q.tflite").exists() and list(tmp_path.iterdir()) == []

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(EdgedermError, match="not a TFLite flatbuffer") as e:
        load_card(bad)
    assert "\n" not in str(e.value)
    # No embedded card and no sidecar: the loader says so.
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(fp32_file[0].read_bytes())
    with pytest.raises(CardError, match="no embedded card"):
        load(plain)

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'edgederm\[tflite\]'"):
        load(plain)
