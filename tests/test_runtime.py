"""One runtime: torch checkpoints and ONNX models give the same probabilities via the same spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgederm.card import load_card, sidecar_path
from edgederm.checkpoint import load_checkpoint
from edgederm.errors import EdgedermError
from edgederm.runtime import backend_for, load

from helpers import HAM7, rgb_images, tiny_checkpoint


def _export_onnx(ckpt: Path, out: Path) -> Path:
    """Export member 0 with torch.onnx (legacy exporter) and embed the card."""
    pytest.importorskip("onnxruntime")
    from edgederm.card import embed_card

    members, card = load_checkpoint(ckpt)
    model = members[0].build()
    size = card.preprocessing.input_size
    torch.onnx.export(model, torch.zeros(1, 3, *size), str(out), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    card.describe_artifact(out, fmt="onnx", precision="fp32")  # format/precision for the embedded card
    embed_card(out, card)
    # As the export does: hash the file after embedding (the runtime verifies the sidecar's hash).
    card.describe_artifact(out, fmt="onnx", precision="fp32")
    card.write_sidecar(out)
    return out


def test_torch_checkpoint_roundtrip(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    assert sidecar_path(ckpt).exists()
    pred = load(ckpt)
    imgs = rgb_images(5)
    probs = pred.predict_proba(imgs)
    assert probs.shape == (5, 7)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    # Same numbers as running the model by hand on the spec's output.
    members, card = load_checkpoint(ckpt)
    x = torch.from_numpy(card.preprocessing.batch(imgs))
    with torch.no_grad():
        ref = torch.softmax(members[0].build()(x), 1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert pred.decide(probs).tolist() == probs.argmax(1).tolist()


def test_image_paths_and_pil_agree(tmp_path: Path) -> None:
    pred = load(tiny_checkpoint(tmp_path / "m.pt"))
    imgs = rgb_images(3)
    paths = []
    for i, im in enumerate(imgs):
        p = tmp_path / f"{i}.png"
        im.save(p)
        paths.append(p)
    np.testing.assert_allclose(pred.predict_proba(paths), pred.predict_proba(imgs), atol=1e-7)


def test_ensemble_weights_and_tta(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "e.pt", members=2)
    pred = load(ckpt)
    assert len(pred.heads()) == 2
    imgs = rgb_images(4)
    members, card = load_checkpoint(ckpt)
    x = torch.from_numpy(card.preprocessing.batch(imgs))
    with torch.no_grad():
        parts = [torch.softmax(m.build()(x), 1).numpy() for m in members]
    np.testing.assert_allclose(pred.predict_proba(imgs), 0.5 * parts[0] + 0.5 * parts[1], atol=1e-6)
    # TTA: views change the probabilities, and the default is the card's view list.
    tta = pred.predict_proba(imgs, tta=["identity", "hflip", "rot90"])
    assert not np.allclose(tta, pred.predict_proba(imgs))
    np.testing.assert_allclose(tta.sum(1), 1, atol=1e-6)


def test_onnx_matches_torch(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    onnx_path = _export_onnx(ckpt, tmp_path / "m.onnx")
    card = load_card(onnx_path)  # embedded
    assert card.artifact["format"] == "onnx" and card.classes == HAM7
    imgs = rgb_images(6)
    p_torch = load(ckpt).predict_proba(imgs)
    p_onnx = load(onnx_path, threads=1).predict_proba(imgs)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EdgedermError, match="unknown artifact format"):
        backend_for(tmp_path / "m.xyz")
    with pytest.raises(EdgedermError, match="not found"):
        load(tmp_path / "missing.pt")
    with pytest.raises(EdgedermError, match="did you mean 'onnx'"):
        backend_for("x", "onnxx")


def test_corrupt_checkpoint_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not a zip really")
    with pytest.raises(EdgedermError) as e:
        load(bad)
    assert "\n" not in str(e.value)


def test_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint carrying arbitrary objects is refused, not executed."""
    evil = tmp_path / "evil.pt"
    torch.save({"format": "edgederm.checkpoint", "obj": Path("x")}, evil)
    with pytest.raises(EdgedermError, match="cannot be read"):
        load_checkpoint(evil)
