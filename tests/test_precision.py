"""An artifact's precision is counted from the file, not taken from the target's name.

A tiny real run is exported to every target this machine can build (no gate: the counts are
what is tested); each file's compute ops, quantized ops and weight dtypes are counted and
checked against what the toolkit is known to write. INT8 builds that leave every compute op
float (ONNX Runtime with every node excluded, NNCF with every op in the ignored scope) must be
recorded as float, in the card and in the summary, and ``card validate`` must catch a card that
claims otherwise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from edgederm.card import validate_path  # noqa: E402
from edgederm.export import ExportContext, export_run, get_target  # noqa: E402
from edgederm.formats.precision import INT8_MIN_FRACTION, OpCount, derive, measure  # noqa: E402

from test_gate import train_tiny_run  # noqa: E402

#: small_cnn(width=8): 8 convolutions and one classifier.
COMPUTE_OPS = 9
#: target -> (measured precision, quantized ops, the weight dtype holding most bytes)
EXPECTED = {
    "onnx": ("fp32", 0, "fp32"),
    "onnx-fp16": ("fp16", 0, "fp16"),
    "onnx-int8": ("int8", COMPUTE_OPS, "int8"),
    "openvino": ("fp16", 0, "fp16"),
    "openvino-int8": ("int8", COMPUTE_OPS, "int8"),
    "tflite-fp16": ("fp16", 0, "fp16"),
    "tflite-int8": ("int8", COMPUTE_OPS, "int8"),
    # ExecuTorch: the exporter's counts on the lowered program; weight storage is not read.
    "executorch": ("fp32", 0, None),
    "executorch-int8": ("int8", COMPUTE_OPS, None),
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train_tiny_run(tmp_path_factory.mktemp("precision"))


@pytest.fixture(scope="module")
def exported(run: Path) -> dict[str, dict[str, Any]]:
    names = [t for t in EXPECTED if get_target(t).unavailable_reason() is None]
    results = export_run(run, ",".join(names), gate=False, n_boot=20)
    return {r["target"]: r for r in results}


@pytest.fixture(scope="module")
def ctx(run: Path) -> Iterator[ExportContext]:
    c = ExportContext.from_path(run)
    yield c
    c.close()


def test_derive_rule() -> None:
    assert derive(OpCount(50, 50, {"int8": 10, "fp32": 1}))["precision"] == "int8"
    assert derive(OpCount(50, 48))["precision"] == "int8"  # first + last float: still INT8
    assert derive(OpCount(50, 40))["precision"] == "mixed"
    assert derive(OpCount(50, 40))["quantized_fraction"] == 0.8
    assert derive(OpCount(50, 0, {"fp16": 100, "fp32": 10}))["precision"] == "fp16"
    assert derive(OpCount(50, 0, {"fp32": 100}))["precision"] == "fp32"
    assert derive(OpCount(0, 0))["precision"] == "fp32"
    assert 0.9 < INT8_MIN_FRACTION <= 1.0


@pytest.mark.parametrize("target", list(EXPECTED))
def test_measured_precision_of_each_target(exported: dict[str, dict[str, Any]], target: str) -> None:
    if target not in exported:
        pytest.skip(f"{target}: {get_target(target).unavailable_reason()}")
    res = exported[target]
    precision, quantized, storage = EXPECTED[target]
    path = Path(res["path"])
    m = measure(path)
    assert m is not None
    assert (m["precision"], m["compute_ops"], m["quantized_ops"]) == (precision, COMPUTE_OPS, quantized)
    if storage is not None:
        assert max(m["weight_bytes"], key=m["weight_bytes"].get) == storage
    # The driver recorded the same in the result, the card (sidecar and embedded) and gate.md.
    assert (res["precision"], res["compute_ops"], res["quantized_ops"]) == (precision, COMPUTE_OPS, quantized)
    side = json.loads(path.with_name(path.name + ".card.json").read_text())["artifact"]
    assert (side["precision"], side["compute_ops"], side["quantized_ops"]) == (precision, COMPUTE_OPS, quantized)
    assert side["precision_measured"] is True
    card, problems = validate_path(path)
    assert card is not None and problems == []
    expect = f"| {target} | {precision} ({quantized}/{COMPUTE_OPS} ops INT8) |" if quantized else f"| {target} | {precision} |"
    assert expect in (path.parent.parent / "gate.md").read_text()


def test_card_validate_catches_a_false_precision(exported: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """A card that says int8 on a float file is a problem ``card validate`` reports."""
    from edgederm.card import embed_card, load_card

    src = Path(exported["onnx"]["path"])
    dst = tmp_path / "model.onnx"
    dst.write_bytes(src.read_bytes())
    card = load_card(src)
    card.artifact.update(precision="int8", quantized_ops=COMPUTE_OPS)
    embed_card(dst, card)
    card.describe_artifact(dst, fmt="onnx", precision="int8")
    card.write_sidecar(dst)
    _, problems = validate_path(dst)
    assert any("artifact.precision" in p and "'fp32'" in p for p in problems), problems
    assert any("artifact.quantized_ops" in p for p in problems), problems


def test_onnx_int8_with_every_op_excluded_is_not_int8(run: Path, ctx: ExportContext, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import onnx

    from edgederm.formats.onnx.export import _preprocessed, quantizable_nodes

    names = quantizable_nodes(onnx.load(str(_preprocessed(ctx))))
    assert len(names) == COMPUTE_OPS
    with caplog.at_level(logging.WARNING, logger="edgederm.export.run"):
        [res] = export_run(run, "onnx-int8", out_dir=tmp_path / "all-float", gate=False,
                           options={"exclude": ",".join(names)})
    assert res["status"] == "built"
    assert (res["precision"], res["quantized_ops"], res["compute_ops"]) == ("fp32", 0, COMPUTE_OPS)
    assert "not an INT8 artifact" in caplog.text
    assert "| onnx-int8 | fp32 |" in (tmp_path / "all-float" / "gate.md").read_text()

    # Some excluded: mixed, with the fraction recorded.
    [res] = export_run(run, "onnx-int8", out_dir=tmp_path / "some-float", gate=False, options={"exclude": ",".join(names[:3])})
    card = json.loads(Path(res["path"] + ".card.json").read_text())["artifact"]
    assert (card["precision"], card["quantized_ops"]) == ("mixed", COMPUTE_OPS - 3)
    assert card["quantized_fraction"] == round((COMPUTE_OPS - 3) / COMPUTE_OPS, 4)


def test_openvino_int8_with_every_op_ignored_is_not_int8(ctx: ExportContext, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino as ov

    from edgederm.formats.openvino.export import quantize_openvino
    from edgederm.formats.openvino.ops import classify

    fp32 = ov.convert_model(str(ctx.onnx_fp32()))
    _, ops = classify(fp32)
    assert len(ops) == COMPUTE_OPS
    xml = tmp_path / "m.xml"
    info = quantize_openvino(ctx.model, ctx.example(), ctx.calibration_batches(16, 1), xml, onnx_path=ctx.onnx_fp32(),
                             subset_size=16, ignored_scope=ops)
    assert (info["precision"], info["quantized_ops"], info["compute_ops"]) == ("fp32", 0, COMPUTE_OPS)
    assert measure(xml)["precision"] == "fp32"

    # Half of them ignored: mixed, both in the exporter's record and counted from the file.
    info = quantize_openvino(ctx.model, ctx.example(), ctx.calibration_batches(16, 1), xml, onnx_path=ctx.onnx_fp32(),
                             subset_size=16, ignored_scope=ops[:4])
    assert (info["precision"], info["quantized_ops"]) == ("mixed", COMPUTE_OPS - 4)
    assert measure(xml)["quantized_ops"] == COMPUTE_OPS - 4
