"""OpenVINO IR export (FP32 / FP16 weights) and NNCF INT8 post-training quantization.

Both paths convert with ``ov.convert_model`` — from the ONNX file when the caller already made
one (fast, and the same graph the ONNX targets ship), else straight from the torch module — and
give the IR a dynamic batch dimension, an ``input`` and a ``logits`` tensor name. INT8 uses NNCF:
``nncf.quantize`` (plain PTQ, full bias correction by default: on an EfficientNet-Lite0 student
the fast variant lost 1.3 dB of logit SQNR, docs/quantization.md) or, when a validation
function is given, ``nncf.quantize_with_accuracy_control``, which reverts the most harmful
quantizers to float until the metric drop is within ``max_drop``. The INT8 IR's precision is
counted from the result (``ops.count_model``): ``mixed`` or ``fp32`` when quantizers were left
out or reverted. IR files are written atomically (see
``edgederm.formats.openvino.metadata.save_ir_atomic``). The card is embedded by the export
driver, not here.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import EdgedermError, MissingExtraError
from ...provenance import package_version
from ...export.context import single_samples
from ..precision import derive
from .metadata import ir_bin_path, save_ir_atomic
from .ops import count_model

if TYPE_CHECKING:
    from ...export.context import ExportContext

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PRESETS = ("performance", "mixed")


def _require(module: str, what: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise MissingExtraError("openvino", module, what) from None


def convert_to_openvino(model: nn.Module, example: torch.Tensor, *, onnx_path: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """``ov.convert_model`` from ONNX (when given) or the torch module; dynamic batch, named I/O."""
    ov = _require("openvino", "OpenVINO export")
    t0 = time.perf_counter()
    if onnx_path is not None:
        if not Path(onnx_path).exists():
            raise EdgedermError(f"ONNX file not found: {onnx_path}")
        ov_model = ov.convert_model(str(onnx_path))
        source = "onnx"
    else:
        shape = ov.PartialShape([-1, *[int(d) for d in example.shape[1:]]])
        with torch.no_grad(), warnings.catch_warnings():
            # OpenVINO's PyTorch frontend traces with torch.jit, which torch now flags as deprecated.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
            ov_model = ov.convert_model(model.eval(), example_input=example, input=[shape])
        source = "torch"
    if len(ov_model.inputs) != 1:
        raise EdgedermError(f"expected a model with one input, got {len(ov_model.inputs)}")
    dynamic = _make_batch_dynamic(ov_model)
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    info = {
        "source": source,
        "dynamic_batch": dynamic,
        "convert_seconds": round(time.perf_counter() - t0, 3),
        "openvino": package_version("openvino"),
    }
    return ov_model, info


def _make_batch_dynamic(ov_model: Any) -> bool:
    import openvino as ov

    shape = ov_model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or shape[0].is_dynamic:
        return True
    dims = [ov.Dimension() if i == 0 else shape[i] for i in range(shape.rank.get_length())]
    try:
        ov_model.reshape({ov_model.input(0): ov.PartialShape(dims)})
    except RuntimeError as e:  # a graph with a baked-in batch (e.g. a hard-coded Reshape)
        log.warning("OpenVINO: cannot make the batch dimension dynamic (%s); keeping batch %s",
                    str(e).strip().splitlines()[0] if str(e).strip() else e, shape[0])
        return False
    return True


def _ir_size(xml: Path) -> int:
    return xml.stat().st_size + (ir_bin_path(xml).stat().st_size if ir_bin_path(xml).exists() else 0)


def export_openvino(
    model: nn.Module,
    example: torch.Tensor,
    out_xml: Path,
    *,
    onnx_path: Path | None = None,
    compress_to_fp16: bool = True,
) -> dict[str, Any]:
    """Write an OpenVINO IR (``out_xml`` + ``.bin``); FP16 weights unless ``compress_to_fp16=False``.

    FP16 here is a storage format: OpenVINO's CPU plugin decompresses the weights and computes
    in FP32 (the runtime backend pins ``EXECUTION_MODE_HINT=ACCURACY``).
    """
    t0 = time.perf_counter()
    out_xml = Path(out_xml)
    ov_model, info = convert_to_openvino(model, example, onnx_path=onnx_path)
    save_ir_atomic(ov_model, out_xml, compress_to_fp16=compress_to_fp16)
    info.update(
        format="openvino",
        precision="fp16" if compress_to_fp16 else "fp32",
        recipe="fp16-weights" if compress_to_fp16 else "fp32",
        files=[out_xml.name, ir_bin_path(out_xml).name],
        size_bytes=_ir_size(out_xml),
        seconds=round(time.perf_counter() - t0, 3),
    )
    log.info("OpenVINO %s IR from %s: %s (%.1f MB, %.1f s)", info["precision"], info["source"], out_xml,
             info["size_bytes"] / 1e6, info["seconds"])
    return info


class _RestorerLog(logging.Handler):
    """What NNCF's accuracy restorer did, read from its log (its API returns only the model).

    The structural view (``ops.classify`` on the result) is recorded as well; this adds
    the metrics NNCF measured and which operations the restorer reverted, in its order.
    """

    _FLOAT = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.steps: list[str] = []
        self.summary: list[str] | None = None
        self.reached = True
        self.metrics: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        import re

        msg = record.getMessage()
        names = [line.strip() for line in msg.splitlines()[1:] if line.strip()]
        if msg.startswith("Reverted "):
            self.steps.extend(names)
        elif "were reverted back to the floating-point precision" in msg:
            self.summary = names
        elif "could not achieve the required accuracy drop" in msg:
            self.reached = False
        for key, pattern in (("metric_fp32", "Metric of initial model: "), ("metric_int8_ptq", "Metric of quantized model: "),
                             ("final_drop", "Accuracy drop with the new quantization scope is ")):
            m = re.match(re.escape(pattern) + self._FLOAT, msg)
            if m:
                self.metrics[key] = float(m.group(1))

    @property
    def reverted(self) -> list[str]:
        # The summary is authoritative (it accounts for step-backs); NNCF omits it when it had to
        # revert everything, and then every step counts.
        names = self.summary if self.summary is not None else self.steps
        return list(dict.fromkeys(names))


def quantize_openvino(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Iterable[np.ndarray],
    out_xml: Path,
    *,
    onnx_path: Path | None = None,
    subset_size: int = 300,
    preset: str = "performance",
    validate: Callable[[Any], float] | None = None,
    max_drop: float | None = None,
    ignored_scope: Sequence[str] | None = None,
    fast_bias_correction: bool = False,
) -> dict[str, Any]:
    """INT8 IR with NNCF post-training quantization on ``calibration`` (NCHW float32 batches).

    With ``validate`` (a function of an ``ov.CompiledModel`` returning a higher-is-better metric,
    e.g. BACC on the validation split), ``nncf.quantize_with_accuracy_control`` keeps the metric
    within ``max_drop`` (absolute, default 0.01) of the FP32 model by reverting the quantizers
    that hurt it most; the reverted operations are returned in ``info["reverted_ops"]``.
    ``ignored_scope`` names operations to keep in float from the start. ``info["precision"]``
    is counted from the quantized model (``int8``, ``mixed``, or ``fp32`` when nothing stayed
    quantized), with ``compute_ops`` / ``quantized_ops``.
    """
    nncf = _require("nncf", "OpenVINO INT8 quantization (NNCF)")
    if preset not in PRESETS:
        raise EdgedermError(f"unknown NNCF preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if max_drop is not None and validate is None:
        raise EdgedermError("max_drop needs a validation function (validate=...)")
    t0 = time.perf_counter()
    out_xml = Path(out_xml)
    items = list(single_samples(calibration, limit=max(subset_size, 1)))
    if not items:
        raise EdgedermError("OpenVINO INT8 quantization needs calibration images; the calibration set is empty")
    ov_model, info = convert_to_openvino(model, example, onnx_path=onnx_path)

    dataset = nncf.Dataset(items)
    common: dict[str, Any] = dict(
        preset=nncf.QuantizationPreset.PERFORMANCE if preset == "performance" else nncf.QuantizationPreset.MIXED,
        subset_size=len(items),
        fast_bias_correction=bool(fast_bias_correction),
    )
    if ignored_scope:
        common["ignored_scope"] = nncf.IgnoredScope(names=list(ignored_scope))
    restorer = _RestorerLog()
    if validate is None:
        quantized = nncf.quantize(ov_model, dataset, **common)
        recipe = "nncf-ptq"
    else:
        drop = 0.01 if max_drop is None else float(max_drop)

        def validation_fn(compiled: Any, data: Iterable[Any]) -> tuple[float, list[list[np.ndarray]]]:
            # Returning each item's outputs puts NNCF in its logits mode: quantizer groups are ranked
            # by output change on the calibration images (cheap), while the accept/reject decision
            # uses the caller's metric on the whole validation set.
            outputs = [list(compiled(item).values()) for item in data]
            return float(validate(compiled)), outputs

        nncf_log = logging.getLogger("nncf")
        nncf_log.addHandler(restorer)
        try:
            quantized = nncf.quantize_with_accuracy_control(
                ov_model, dataset, dataset, validation_fn,
                max_drop=drop, drop_type=nncf.DropType.ABSOLUTE, **common,
            )
        finally:
            nncf_log.removeHandler(restorer)
        recipe = "nncf-accuracy-control"
        info.update(max_drop=drop, drop_type="absolute", reached_max_drop=restorer.reached, **restorer.metrics)
        if not restorer.reached:
            log.warning("NNCF accuracy control could not keep the metric drop within %.4g", drop)
    count = count_model(quantized)
    measured = derive(count)
    # Float constants stay FP32: reverted layers must compute exactly what NNCF validated.
    save_ir_atomic(quantized, out_xml, compress_to_fp16=False)
    info.update(
        format="openvino",
        precision=measured["precision"],
        recipe=recipe,
        preset=preset,
        fast_bias_correction=bool(fast_bias_correction),
        calibration_samples=len(items),
        ignored_scope=list(ignored_scope or []),
        reverted_ops=restorer.reverted,
        quantized_ops=count.quantized_ops,
        compute_ops=count.compute_ops,
        float_ops=count.float_op_names,
        nncf=package_version("nncf"),
        files=[out_xml.name, ir_bin_path(out_xml).name],
        size_bytes=_ir_size(out_xml),
        seconds=round(time.perf_counter() - t0, 3),
    )
    log.info("OpenVINO INT8 (%s): %d of %d compute ops quantized (%s), %d reverted -> %s (%.1f s)", recipe,
             count.quantized_ops, count.compute_ops, measured["precision"], len(restorer.reverted), out_xml, info["seconds"])
    if not count.quantized_ops:
        log.warning("OpenVINO INT8 (%s): no compute op stayed quantized; the IR is a float model (%s)", recipe,
                    measured["precision"])
    return info


# -- targets (their rows: edgederm.formats.table) ---------------------------------------------------
def build_openvino(ctx: "ExportContext", out: Path, *, compress_to_fp16: bool) -> dict[str, Any]:
    info = dict(export_openvino(ctx.model, ctx.example(), out, onnx_path=ctx.onnx_fp32(), compress_to_fp16=compress_to_fp16) or {})
    info.setdefault("precision", "fp16" if compress_to_fp16 else "fp32")
    return info


def build_openvino_int8(
    ctx: "ExportContext", out: Path, *, preset: str, subset_size: int, accuracy_control: bool, max_drop: float,
    fast_bias_correction: bool = False,
    qat: bool = False, qat_epochs: int = 2, qat_images: int = 600, qat_lr: float = 1e-5,
) -> dict[str, Any]:
    if qat:
        if accuracy_control:
            raise EdgedermError("openvino-int8: qat and accuracy_control are two recipes; choose one")
        return build_openvino_int8_qat(ctx, out, preset=preset, subset_size=subset_size, qat_epochs=qat_epochs,
                                       qat_images=qat_images, qat_lr=qat_lr)
    # Accuracy control measures BACC on train-split images, never on validation: validation is
    # what the gate judges the artifact on afterwards.
    validate = ctx.bacc_validator() if accuracy_control else None
    info = quantize_openvino(
        ctx.model, ctx.example(), ctx.calibration_batches(subset_size, 1), out, onnx_path=ctx.onnx_fp32(),
        subset_size=subset_size, preset=preset, validate=validate, max_drop=max_drop if accuracy_control else None,
        fast_bias_correction=fast_bias_correction,
    )
    return {"preset": preset, "subset_size": subset_size, "accuracy_control": accuracy_control,
            "fast_bias_correction": fast_bias_correction, **dict(info or {})}



# -- quantization-aware fine-tuning (the last INT8 recipe; edgederm.quant.qat) --------------------
def quantize_openvino_qat(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Sequence[np.ndarray],
    images: np.ndarray,
    out_xml: Path,
    *,
    preset: str = "performance",
    epochs: int = 2,
    lr: float = 1e-5,
) -> dict[str, Any]:
    """INT8 IR of ``model`` after NNCF quantization-aware fine-tuning on ``images`` (train split).

    The fine-tuned torch module goes through ``ov.convert_model`` as NNCF documents: its fake
    quantizers become FakeQuantize ops, which the CPU plugin runs as INT8.
    """
    from ...quant.qat import quantize_aware

    _require("openvino", "OpenVINO INT8 quantization-aware training")
    t0 = time.perf_counter()
    out_xml = Path(out_xml)
    quantized, qinfo = quantize_aware(model, calibration, images, epochs=epochs, lr=lr, preset=preset)
    with warnings.catch_warnings():
        # NNCF's quantizers read their levels with .item() while traced: constant by design.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        ov_model, info = convert_to_openvino(quantized, example)
    count = count_model(ov_model)  # the same counter and rule as post-training INT8
    save_ir_atomic(ov_model, out_xml, compress_to_fp16=False)
    info.update(
        qinfo,
        format="openvino",
        precision=derive(count)["precision"],
        recipe="nncf-qat",
        preset=preset,
        quantized_ops=count.quantized_ops,
        compute_ops=count.compute_ops,
        float_ops=count.float_op_names,
        nncf=package_version("nncf"),
        files=[out_xml.name, ir_bin_path(out_xml).name],
        size_bytes=_ir_size(out_xml),
        seconds=round(time.perf_counter() - t0, 3),
    )
    log.info("OpenVINO INT8 (nncf-qat): %d of %d compute ops quantized -> %s (%.1f s)", count.quantized_ops,
             count.compute_ops, out_xml, info["seconds"])
    return info


def build_openvino_int8_qat(
    ctx: "ExportContext", out: Path, *, preset: str, subset_size: int, qat_epochs: int, qat_images: int, qat_lr: float
) -> dict[str, Any]:
    """``openvino-int8`` with ``qat=true``: NNCF PTQ on the calibration images, then fine-tuning
    on ``qat_images`` train-split images distilled from the FP32 model."""
    from ...quant.qat import BATCH, qat_records

    records = qat_records(ctx, qat_images)
    images = ctx.preprocess_records(records)
    calibration = list(ctx.calibration_batches(subset_size, BATCH))
    info = quantize_openvino_qat(ctx.model, ctx.example(), calibration, images, out, preset=preset, epochs=qat_epochs, lr=qat_lr)
    return {"preset": preset, "subset_size": subset_size, "qat": True, "qat_epochs": qat_epochs, "qat_images": len(records),
            "qat_lr": qat_lr, **info}
