"""OpenVINO IR export, NNCF INT8 (plain and with accuracy control) and the ``openvino`` runtime backend.

A tiny small_cnn (randomised BN) goes through every path; the artifact gets its card embedded in
``rt_info``, is opened by ``edgederm.runtime.load`` and must agree with PyTorch on the same images
through the same ``PreprocessSpec``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edgederm[openvino]'")

from edgederm.card import ArtifactCard, load_card, sidecar_path  # noqa: E402
from edgederm.checkpoint import load_checkpoint  # noqa: E402
from edgederm.errors import EdgedermError, MissingExtraError  # noqa: E402
from edgederm.formats.openvino.export import export_openvino, quantize_openvino  # noqa: E402
from edgederm.formats.openvino.ops import classify  # noqa: E402
from edgederm.runtime import load  # noqa: E402
from edgederm.card import embed_card, read_embedded_card  # noqa: E402
from edgederm.formats.openvino.metadata import ir_bin_path  # noqa: E402

from helpers import HAM7, tiny_checkpoint, natural_images  # noqa: E402

SIZE = 32
INT8_MIN_AGREEMENT = 0.85  # argmax agreement with FP32 on natural-ish images (measured: 0.95-1.0)
INT8_MIN_COSINE = 0.9  # mean per-image cosine of centred logits (measured: > 0.99)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, ArtifactCard]:
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("ov") / "m.pt", size=SIZE)
    members, card = load_checkpoint(ckpt)
    return ckpt, members[0].build(), card


def _finish(path: Path, card: ArtifactCard, precision: str) -> ArtifactCard:
    """What the export driver does: describe, embed the card, no sidecar (the embedded one must do)."""
    c = card.copy()
    c.describe_artifact(path, fmt="openvino", precision=precision)
    embed_card(path, c)
    assert not sidecar_path(path).exists()
    return c


def _calibration(card: ArtifactCard, n: int = 48) -> list[np.ndarray]:
    imgs = natural_images(n, seed=1)
    return [card.preprocessing.batch(imgs[i : i + 8]) for i in range(0, n, 8)]


def _centred_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.mark.parametrize("fp16,tol", [(False, 1e-4), (True, 1e-2)])
def test_ir_roundtrip_matches_torch(tiny, tmp_path: Path, fp16: bool, tol: float) -> None:
    ckpt, model, card = tiny
    xml = tmp_path / "m.xml"
    info = export_openvino(model, torch.zeros(1, 3, SIZE, SIZE), xml, compress_to_fp16=fp16)
    assert info["source"] == "torch" and info["dynamic_batch"] is True
    assert info["precision"] == ("fp16" if fp16 else "fp32")
    assert ir_bin_path(xml).exists() and info["size_bytes"] > xml.stat().st_size
    _finish(xml, card, info["precision"])
    back = load_card(xml)  # from rt_info
    assert back.classes == HAM7 and back.artifact["format"] == "openvino" and back.artifact["precision"] == info["precision"]

    imgs = natural_images(12, seed=3)
    pred = load(xml, threads=1)
    assert pred.format == "openvino"
    p_ov = pred.predict_proba(imgs, batch_size=5)  # batches of 5 and 2: the batch dimension is dynamic
    p_torch = load(ckpt).predict_proba(imgs)
    err = float(np.abs(p_ov - p_torch).max())
    assert err <= tol
    if fp16:
        assert err > 1e-7  # the weights really are FP16 (an FP32 save would also pass the tolerance)
    else:
        # FP32 really computes in FP32: on CPUs with native BF16 (AMX, AVX512-BF16) OpenVINO's
        # default performance mode would run it in BF16 (about 5e-5 here), the backend must not.
        assert err < 1e-6


def test_static_batch_compile_runs_other_batches_in_chunks(tiny, tmp_path: Path) -> None:
    """batch=N (what the bench passes) compiles a static model; any batch still gives the same result."""
    _, model, card = tiny
    xml = tmp_path / "m.xml"
    export_openvino(model, torch.zeros(1, 3, SIZE, SIZE), xml, compress_to_fp16=False)
    _finish(xml, card, "fp32")
    static = load(xml, threads=1, batch=1)
    assert not static.compiled.input(0).get_partial_shape().is_dynamic
    assert list(static.compiled.input(0).get_shape())[0] == 1
    imgs = natural_images(5, seed=4)
    np.testing.assert_allclose(static.predict_proba(imgs, batch_size=5), load(xml, threads=1).predict_proba(imgs, batch_size=5),
                               atol=1e-6)
    with pytest.raises(EdgedermError, match="at least 1"):
        load(xml, batch=0)


def test_from_onnx_file(tiny, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="the ONNX route needs the onnx extra")
    ckpt, model, card = tiny
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(onnx_path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    xml = tmp_path / "m.xml"
    info = export_openvino(model, torch.zeros(1, 3, SIZE, SIZE), xml, onnx_path=onnx_path, compress_to_fp16=False)
    assert info["source"] == "onnx" and info["dynamic_batch"] is True
    _finish(xml, card, "fp32")
    imgs = natural_images(6, seed=4)
    assert np.abs(load(xml).predict_proba(imgs) - load(ckpt).predict_proba(imgs)).max() <= 1e-4
    with pytest.raises(EdgedermError, match="ONNX file not found"):
        export_openvino(model, torch.zeros(1, 3, SIZE, SIZE), tmp_path / "x.xml", onnx_path=tmp_path / "missing.onnx")


def test_int8_ptq_agrees_with_fp32(tiny, tmp_path: Path) -> None:
    ckpt, model, card = tiny
    xml = tmp_path / "q.xml"
    info = quantize_openvino(model, torch.zeros(1, 3, SIZE, SIZE), _calibration(card), xml, subset_size=40)
    assert info["precision"] == "int8" and info["recipe"] == "nncf-ptq"
    assert info["calibration_samples"] == 40  # batches of 8 split into samples, capped at subset_size
    assert info["quantized_ops"] > 0 and info["reverted_ops"] == []
    import openvino as ov

    quantized, _ = classify(ov.Core().read_model(str(xml)))
    assert len(quantized) == info["quantized_ops"]
    _finish(xml, card, "int8")

    imgs = natural_images(64, seed=7)
    x = card.preprocessing.batch(imgs)
    q_logits = load(xml, threads=1).forward(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    agreement = float((q_logits.argmax(1) == ref.argmax(1)).mean())
    print(f"openvino int8: argmax agreement {agreement:.3f}, cosine {_centred_cosine(q_logits, ref):.4f}")
    assert agreement >= INT8_MIN_AGREEMENT, agreement
    assert _centred_cosine(q_logits, ref) >= INT8_MIN_COSINE
    assert not np.allclose(q_logits, ref, atol=1e-5)  # it really is quantized


def test_accuracy_control_reverts_until_the_metric_holds(tiny, tmp_path: Path) -> None:
    import openvino as ov

    ckpt, model, card = tiny
    val = card.preprocessing.batch(natural_images(32, seed=11))
    with torch.no_grad():
        ref = model(torch.from_numpy(val)).numpy()
    seen: list[type] = []

    def validate(compiled) -> float:
        # Higher is better: minus the worst logit error against the FP32 model.
        seen.append(type(compiled))
        return -float(np.abs(compiled(val)[0] - ref).max())

    xml = tmp_path / "ac.xml"
    calib = _calibration(card, 16)
    # A drop budget no INT8 model meets: the restorer must revert operations to float.
    info = quantize_openvino(model, torch.zeros(1, 3, SIZE, SIZE), calib, xml, validate=validate, max_drop=1e-6)
    assert info["recipe"] == "nncf-accuracy-control" and info["drop_type"] == "absolute"
    assert all(t is ov.CompiledModel for t in seen) and len(seen) >= 3
    assert info["reverted_ops"], info
    assert info["metric_fp32"] > info["metric_int8_ptq"]
    assert set(info["float_ops"]) & set(info["reverted_ops"])
    _finish(xml, card, "int8")
    assert load(xml).predict_proba(natural_images(4, seed=2)).shape == (4, 7)

    # A generous budget: nothing is reverted and the run says so.
    info2 = quantize_openvino(model, torch.zeros(1, 3, SIZE, SIZE), calib, tmp_path / "ac2.xml", validate=validate, max_drop=10.0)
    assert info2["reached_max_drop"] is True and info2["reverted_ops"] == []
    with pytest.raises(EdgedermError, match="needs a validation function"):
        quantize_openvino(model, torch.zeros(1, 3, SIZE, SIZE), calib, tmp_path / "x.xml", max_drop=0.01)
    with pytest.raises(EdgedermError, match="calibration set is empty"):
        quantize_openvino(model, torch.zeros(1, 3, SIZE, SIZE), [], tmp_path / "x.xml")
    with pytest.raises(EdgedermError, match="unknown NNCF preset"):
        quantize_openvino(model, torch.zeros(1, 3, SIZE, SIZE), calib, tmp_path / "x.xml", preset="fast")


def test_embed_replaces_card_keeps_weights_and_leaves_no_temp_files(tiny, tmp_path: Path) -> None:
    _, model, card = tiny
    xml = tmp_path / "m.xml"
    export_openvino(model, torch.zeros(1, 3, SIZE, SIZE), xml, compress_to_fp16=False)
    assert read_embedded_card(xml) is None
    bin_size = ir_bin_path(xml).stat().st_size
    x = card.preprocessing.batch(natural_images(3))
    c = card.copy()
    _finish(xml, c, "fp32")
    before = load(xml).forward(x)
    c.name = "renamed"
    embed_card(xml, c)
    assert read_embedded_card(xml).name == "renamed"
    # Re-embedding must not recompress FP32 weights to FP16 (OpenVINO's save default).
    assert ir_bin_path(xml).stat().st_size == bin_size
    np.testing.assert_array_equal(load(xml).forward(x), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


def test_broken_ir_and_missing_extra_are_one_line(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, model, card = tiny
    xml = tmp_path / "m.xml"
    export_openvino(model, torch.zeros(1, 3, SIZE, SIZE), xml)
    _finish(xml, card, "fp16")
    ir_bin_path(xml).unlink()
    with pytest.raises(EdgedermError, match="weights file m.bin is missing") as e:
        load(xml)
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.xml"
    bad.write_text("<net>not really</net>")
    ir_bin_path(bad).write_bytes(b"")
    with pytest.raises(EdgedermError, match="not a readable OpenVINO IR"):
        load_card(bad)

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'edgederm\[openvino\]'"):
        load(xml)
