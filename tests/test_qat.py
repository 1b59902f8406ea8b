"""Quantization-aware fine-tuning (``openvino-int8`` with ``qat=true``, the last INT8 recipe of
``--recipe auto``) on a tiny real run.

The recipe must write an IR that holds quantized ops, opens through ``edgederm.runtime.load``,
is closer to FP32 than the same recipe without fine-tuning (``qat_epochs=0``: NNCF's PTQ
initialisation alone) on the train images it was tuned on, decodes train-split images only, and
leaves the FP32 model it started from untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edgederm[openvino]'")
pytest.importorskip("nncf", reason="NNCF is not installed: pip install 'edgederm[openvino]'")

from edgederm.data.records import Record  # noqa: E402
from edgederm.errors import EdgedermError  # noqa: E402
from edgederm.export.context import ExportContext  # noqa: E402
from edgederm.export.registry import get_target  # noqa: E402
from edgederm.formats.table import FORMATS  # noqa: E402
from edgederm.quant.qat import qat_records  # noqa: E402
from edgederm.runtime import load  # noqa: E402

from test_gate import _seal, train_tiny_run  # noqa: E402

QAT_IMAGES = 48
# Toy scale: a 32 px small_cnn, more epochs with a larger step than the real defaults (2, 1e-5);
# at 1e-3 the toy model overshoots and ends farther from FP32 than it started (measured).
TOY = {"qat": True, "qat_images": QAT_IMAGES, "qat_epochs": 6, "qat_lr": 3e-4, "subset_size": 32}


class RecordingContext(ExportContext):
    """An ExportContext that remembers the id of every image it decodes."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.decoded: list[str] = []

    def preprocess_records(self, records: Sequence[Record]) -> np.ndarray:
        self.decoded.extend(r.image_id for r in records)
        return super().preprocess_records(records)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train_tiny_run(tmp_path_factory.mktemp("qat"))


def _ctx(run: Path, cache: Path) -> RecordingContext:
    ckpt = next(iter(sorted(run.glob("model.pt"))))
    return RecordingContext(ckpt, run_dir=run, cache_dir=cache)


def _build(ctx: ExportContext, out: Path, **opts: Any) -> dict[str, Any]:
    t = get_target("openvino-int8")
    return t.build(ctx, out, **t.resolve_options(opts))


def _ir_logits(xml: Path, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"EXECUTION_MODE_HINT": "ACCURACY"})
    return np.concatenate([np.asarray(compiled(x[i : i + 1])[0]) for i in range(len(x))])


def _fq_count(xml: Path) -> int:
    import openvino as ov

    return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(xml)).get_ordered_ops())


def test_qat_recipe_builds_an_int8_ir_closer_to_fp32_from_train_images_only(run: Path, tmp_path: Path) -> None:
    ctx = _ctx(run, tmp_path / "cache")
    try:
        with torch.no_grad():
            probe = torch.from_numpy(ctx.preprocess_records(ctx.split("val").records[:8]))
            fp32_before = ctx.model(probe).clone()
        ctx.decoded.clear()

        ptq = _build(ctx, tmp_path / "ptq" / "model.xml", **{**TOY, "qat_epochs": 0})
        qat = _build(ctx, tmp_path / "qat" / "model.xml", **TOY)

        # (d) every image the recipe decoded (fine-tuning, calibration, the tracing example) is a
        # train image; validation is what the gate judges the artifact on.
        train = {r.image_id for r in ctx.split("train").records}
        held_out = {r.image_id for s in ("val", "test") for r in ctx.split(s).records}
        assert ctx.decoded and set(ctx.decoded) <= train and not set(ctx.decoded) & held_out
        assert qat["qat_images"] == QAT_IMAGES and qat["qat"]["train_images"] == QAT_IMAGES

        # (a) the artifact holds quantized compute, measured from the IR
        xml = tmp_path / "qat" / "model.xml"
        assert _fq_count(xml) >= qat["quantized_ops"] > 0 and qat["precision"] == "int8"
        assert qat["recipe"] == "nncf-qat" and qat["qat"]["epochs"] == 6

        # (c) on the images it was tuned on, the fine-tuned IR is closer to FP32 than the PTQ start
        seen = ctx.preprocess_records(qat_records(ctx, QAT_IMAGES))
        with torch.no_grad():
            ref = ctx.model(torch.from_numpy(seen)).numpy()
        rms = {name: float(np.sqrt(np.mean((_ir_logits(tmp_path / name / "model.xml", seen) - ref) ** 2)))
               for name in ("ptq", "qat")}
        assert rms["qat"] < 0.9 * rms["ptq"], rms
        assert qat["qat"]["after"]["logit_rms"] < qat["qat"]["before"]["logit_rms"]
        assert ptq["qat"]["after"] == ptq["qat"]["before"] and ptq["qat"]["loss_per_epoch"] == []

        # the FP32 model the context hands every other target is untouched
        with torch.no_grad():
            assert torch.equal(ctx.model(probe), fp32_before)

        # (b) with its card, the IR opens through the runtime loader and predicts
        card = ctx.export_card(target="openvino-int8", fmt="openvino", precision=qat["precision"], info=dict(qat),
                               recipe="int8-qat", options=dict(TOY))
        _seal(xml, card, "openvino")
        from edgederm.data.images import load_image

        images = [load_image(r.ref) for r in ctx.split("val").records[:6]]
        pred = load(xml, threads=1)
        assert pred.format == "openvino" and pred.card.artifact["precision"] == "int8"
        p = pred.predict_proba(images, tta=False)
        assert p.shape == (6, len(ctx.classes)) and np.allclose(p.sum(1), 1.0, atol=1e-4)
    finally:
        ctx.close()


def test_qat_and_accuracy_control_are_two_recipes(run: Path, tmp_path: Path) -> None:
    ctx = _ctx(run, tmp_path / "cache")
    try:
        with pytest.raises(EdgedermError, match="choose one"):
            _build(ctx, tmp_path / "x" / "model.xml", qat=True, accuracy_control=True)
    finally:
        ctx.close()


def test_recipe_auto_tries_qat_last_among_int8_before_fp16() -> None:
    [spec] = [t for t in FORMATS["openvino"].targets if t.name == "openvino-int8"]
    names = [r.name for r in spec.auto]
    assert "int8-qat" in names and names.index("int8-qat") < names.index("fp16")
    qat = spec.auto[names.index("int8-qat")]
    assert dict(qat.options) == {"qat": True} and qat.target is None
    # every recipe after it leaves INT8 (falls back to another target)
    assert all(r.target is not None for r in spec.auto[names.index("int8-qat") + 1 :])
    assert all(not r.options.get("qat") for r in spec.auto[: names.index("int8-qat")])
