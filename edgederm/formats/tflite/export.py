"""LiteRT (TFLite) export with litert-torch, FP16 and full-integer INT8 with ai-edge-quantizer.

- ``fp32``: ``litert_torch.convert(model.eval(), (example,))`` — straight from PyTorch, no
  TensorFlow. The input stays NCHW float32, as the card's ``PreprocessSpec`` says.
- ``fp16``: the FP32 flatbuffer with FP16 weights (ai-edge-quantizer's ``float_casting``
  algorithm on conv / depthwise / fully-connected weights; compute stays FP32).
- ``int8``: full-integer static quantization of the FP32 flatbuffer with ai-edge-quantizer's
  ``static_wi8_ai8`` recipe (INT8 per-channel weights, INT8 activations), calibrated on the given
  images. Its input and output tensors are INT8; the runtime backend quantizes the float input
  and dequantizes the output with each tensor's scale and zero point.

ai-edge-quantizer is LiteRT's post-training quantizer and a dependency of litert-torch; on the fp32
file it takes seconds, where litert-torch's PT2E route re-traces the model (25-30 s for a
ResNet-50 here) for the same full-integer result. (The package was renamed ``litert-quantizer``
with the same API; either import works.)

The model is converted at batch 1 (dynamic batch sizes do not lower through litert-torch for
every model); the runtime resizes the input tensor for larger batches.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ...errors import EdgedermError, MissingExtraError
from ...export.context import single_samples
from ...fsutil import atomic_path
from ...provenance import package_version

if TYPE_CHECKING:
    from ...export.context import ExportContext

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


def _litert_torch() -> Any:
    try:
        return importlib.import_module("litert_torch")
    except ImportError:
        raise MissingExtraError("tflite", "litert_torch", "TFLite export") from None


def _quantizer_module() -> tuple[Any, str]:
    for module, dist in (("ai_edge_quantizer", "ai-edge-quantizer"), ("litert_quantizer", "litert-quantizer")):
        try:
            return importlib.import_module(module), dist
        except ImportError:
            continue
    raise MissingExtraError("tflite", "ai_edge_quantizer", "TFLite FP16/INT8 quantization")


class _DropChatter(logging.Filter):
    """litert-torch and ai-edge-quantizer log per-op INFO lines on the root logger."""

    _SOURCES = ("litert_torch", "ai_edge_quantizer", "litert_quantizer", "litert_converter")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(s in record.pathname for s in self._SOURCES)


@contextlib.contextmanager
def _quiet_litert() -> Iterator[None]:
    """Keep the converters' progress tree (stdout) and chatter for debug logging only."""
    lt = _litert_torch()
    debug = log.isEnabledFor(logging.DEBUG)
    before = lt.config.show_progress
    lt.config.show_progress = debug
    chatter = _DropChatter()
    root = logging.getLogger()
    if not debug:
        root.addFilter(chatter)
    try:
        yield
    finally:
        lt.config.show_progress = before
        root.removeFilter(chatter)


def convert_fp32(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    """litert-torch conversion at batch 1 (written to ``out`` as is; callers make it atomic)."""
    lt = _litert_torch()
    x = example[:1].detach().float().cpu()
    with _quiet_litert(), torch.no_grad():
        edge = lt.convert(model.eval(), (x,))
        edge.export(str(out))


def _signature(model_path: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    sigs = Interpreter(model_path=str(model_path)).get_signature_list()
    if len(sigs) != 1:
        raise EdgedermError(f"{model_path}: expected one signature, found {len(sigs)}")
    key, io = next(iter(sigs.items()))
    if len(io["inputs"]) != 1:
        raise EdgedermError(f"{model_path}: expected one input, found {io['inputs']}")
    return key, io["inputs"][0]


def _fp16_weights(fp32: Path) -> tuple[bytes, dict[str, Any]]:
    aeq, dist = _quantizer_module()
    qt = aeq.qtyping
    q = aeq.quantizer.Quantizer(str(fp32))
    config = qt.OpQuantizationConfig(
        weight_tensor_config=qt.TensorQuantizationConfig(num_bits=16, dtype=qt.TensorDataType.FLOAT),
        compute_precision=qt.ComputePrecision.FLOAT,
        explicit_dequantize=True,
    )
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE"):
        q.update_quantization_recipe(
            regex=".*",
            operation_name=getattr(qt.TFLOperationName, op),
            algorithm_key=aeq.quantizer.AlgorithmName.FLOAT_CASTING,
            op_config=config,
        )
    result = q.quantize(enable_progress_report=False)
    return bytes(result.quantized_model), {"recipe": "fp16-weights (float_casting)", "quantizer": f"{dist} {package_version(dist)}"}


def _int8_static(fp32: Path, samples: list[np.ndarray]) -> tuple[bytes, dict[str, Any]]:
    aeq, dist = _quantizer_module()
    key, input_name = _signature(fp32)
    q = aeq.quantizer.Quantizer(str(fp32), aeq.recipe.static_wi8_ai8())
    with warnings.catch_warnings():
        # The calibrator keeps every intermediate tensor on purpose; its interpreter warns about it.
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        stats = q.calibrate({key: [{input_name: x} for x in samples]}, num_threads=max(1, os.cpu_count() or 1))
        result = q.quantize(stats, enable_progress_report=False)
    return bytes(result.quantized_model), {
        "recipe": "static_wi8_ai8",
        "quantizer": f"{dist} {package_version(dist)}",
        "calibration_samples": len(samples),
    }


def _io_details(path: Path) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))

    def describe(d: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": np.dtype(d["dtype"]).name, "shape": [int(s) for s in d["shape"]]}
        scale, zero_point = d["quantization"]
        if scale:
            out.update(scale=float(scale), zero_point=int(zero_point))
        return out

    return {"input": describe(it.get_input_details()[0]), "output": describe(it.get_output_details()[0])}


def export_tflite(
    model: nn.Module,
    example: torch.Tensor,
    out: Path,
    *,
    precision: str = "fp32",
    calibration: Iterable[np.ndarray] | None = None,
    subset_size: int = 300,
) -> dict[str, Any]:
    """Write a ``.tflite`` model (``fp32``, ``fp16`` weights, or full-integer ``int8``).

    ``calibration`` (NCHW float32 batches, preprocessed exactly as the card says) is required
    for ``int8``; at most ``subset_size`` images are used.
    """
    if precision not in PRECISIONS:
        raise EdgedermError(f"unknown TFLite precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and calibration is None:
        raise EdgedermError("TFLite INT8 needs a calibration set (calibration=...)")
    samples: list[np.ndarray] = []
    if precision == "int8":
        samples = list(single_samples(calibration or [], limit=max(subset_size, 1)))
        if not samples:
            raise EdgedermError("TFLite INT8 quantization needs calibration images; the calibration set is empty")
    _litert_torch()
    t0 = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", suffix=".tmp", dir=out.parent))
    info: dict[str, Any] = {"format": "tflite", "precision": precision, "source": "torch",
                            "converter": f"litert-torch {package_version('litert-torch')}"}
    try:
        with _quiet_litert():
            fp32 = tmp_dir / "fp32.tflite"
            convert_fp32(model, example, fp32)
            info["convert_seconds"] = round(time.perf_counter() - t0, 3)
            if precision == "fp32":
                info["recipe"] = "fp32"
                with atomic_path(out) as tmp:
                    shutil.copyfile(fp32, tmp)
            else:
                data, extra = _fp16_weights(fp32) if precision == "fp16" else _int8_static(fp32, samples)
                info.update(extra)
                with atomic_path(out) as tmp:
                    tmp.write_bytes(data)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    info.update(_io_details(out))
    info.update(size_bytes=out.stat().st_size, seconds=round(time.perf_counter() - t0, 3))
    log.info("TFLite %s (%s): %s (%.1f MB, %.1f s)", precision, info["recipe"], out, info["size_bytes"] / 1e6, info["seconds"])
    return info


# -- targets (their rows: edgederm.formats.table) ---------------------------------------------------
def _build(ctx: "ExportContext", out: Path, precision: str, calib_images: int = 0) -> dict[str, Any]:
    calib = ctx.calibration_batches(int(calib_images), 1) if precision == "int8" else None
    info = export_tflite(ctx.model, ctx.example(), out, precision=precision, calibration=calib)
    return {"precision": precision, **dict(info or {})}


def build_tflite(ctx: "ExportContext", out: Path) -> dict[str, Any]:
    return _build(ctx, out, "fp32")


def build_tflite_fp16(ctx: "ExportContext", out: Path) -> dict[str, Any]:
    return _build(ctx, out, "fp16")


def build_tflite_int8(ctx: "ExportContext", out: Path, *, calib_images: int) -> dict[str, Any]:
    return _build(ctx, out, "int8", calib_images)
