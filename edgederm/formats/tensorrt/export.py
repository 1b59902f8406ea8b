"""TensorRT targets: an engine built from the FP32 ONNX graph with the TensorRT Python API.

``tensorrt-fp16`` sets the FP16 builder flag; ``tensorrt-int8`` sets INT8 (+ FP16 for layers
without INT8 kernels) and calibrates with an ``IInt8EntropyCalibrator2`` over class-balanced
train-split batches (the calibration cache is kept next to the exports, so a rebuild does not
recalibrate). A timing cache file makes rebuilds fast. The engine is specific to the GPU and
TensorRT version it was built with (the card records both); build it on the target device (e.g.
the Jetson).

TensorRT needs an NVIDIA GPU and NVIDIA's ``tensorrt`` package (PyPI's ``tensorrt`` wheel pulls
the libraries from NVIDIA's index). Where either is missing the target says exactly that, and
``edgederm export RUN --target tensorrt-fp16 --precheck`` checks on the CPU whether FP16 keeps
the accuracy gate: the FP32 ONNX graph with its input, weights and every intermediate tensor
rounded to FP16 (float32 I/O; ``edgederm.formats.onnx.export.fp16_storage_graph``) run by ONNX Runtime
over the validation images (NaN/Inf scan, max probability difference and argmax agreement with
FP32, and the gate metrics).

Engines are run by ``edgederm.formats.tensorrt.runtime.TensorRTPredictor``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ...errors import EdgedermError

if TYPE_CHECKING:
    from ...export.context import ExportContext

log = logging.getLogger(__name__)



def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def make_calibrator(batches: Iterable[np.ndarray], batch_size: int, cache_file: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` (NCHW float32) through CUDA memory."""
    import tensorrt as trt
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._it = iter(batches)
            self._device: Any = None  # keep the current batch alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            x = next(self._it, None)
            if x is None or x.shape[0] != batch_size:  # a short last batch is dropped
                return None
            self._device = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.exists() else None

        def write_calibration_cache(self, cache: Any) -> None:
            from ...fsutil import atomic_path

            with atomic_path(cache_file) as tmp:
                tmp.write_bytes(bytes(cache))

    return EntropyCalibrator()


def build_engine(
    onnx_path: str | Path,
    out: str | Path,
    *,
    precision: str,
    calibration: Iterable[np.ndarray] | None = None,
    calib_batch: int = 8,
    calib_cache: Path | None = None,
    timing_cache: Path | None = None,
    workspace_gb: float = 2.0,
    opt_batch: int = 1,
    max_batch: int = 8,
) -> dict[str, Any]:
    """Build a serialized TensorRT engine from an ONNX graph (explicit batch, dynamic profile)."""
    import tensorrt as trt

    if precision not in ("fp16", "int8"):
        raise ValueError(f"precision must be fp16 or int8, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if _major(trt.__version__) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgedermError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    inp = network.get_input(0)
    chw = tuple(int(d) for d in inp.shape[1:])
    profile = builder.create_optimization_profile()
    opt_batch = max(1, min(opt_batch, max_batch))
    profile.set_shape(inp.name, (1, *chw), (opt_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    if not builder.platform_has_fast_fp16:
        log.warning("this GPU has no fast FP16; the engine will be slow")
    config.set_flag(trt.BuilderFlag.FP16)  # INT8 engines fall back to FP16 (not FP32) per layer
    if precision == "int8":
        if calibration is None or calib_cache is None:
            raise ValueError("int8 needs calibration batches and a calibration cache path")
        if not builder.platform_has_fast_int8:
            log.warning("this GPU has no fast INT8")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_calibrator(calibration, calib_batch, calib_cache)
        config.set_calibration_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgedermError("TensorRT could not build the engine (the TensorRT log above says why)")
    Path(out).write_bytes(bytes(serialized))
    if timing_cache is not None:
        from ...fsutil import atomic_path

        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unknown"
    return {"tensorrt": trt.__version__, "device": device, "precision": precision, "profile_batch": [1, opt_batch, max_batch],
            "workspace_gb": workspace_gb, "timing_cache": str(timing_cache) if timing_cache else None}


def _timing_cache(ctx: "ExportContext", option: str) -> Path:
    if option:
        return Path(option)
    base = getattr(ctx, "export_dir", None) or ctx.cache_dir
    return Path(base) / "tensorrt.timing.cache"


def build_tensorrt_fp16(ctx: "ExportContext", out: Path, *, workspace_gb: float, max_batch: int, opt_batch: int, timing_cache: str) -> dict[str, Any]:
    return build_engine(ctx.onnx_fp32(), out, precision="fp16", timing_cache=_timing_cache(ctx, timing_cache),
                        workspace_gb=workspace_gb, opt_batch=opt_batch, max_batch=max_batch)


def build_tensorrt_int8(
    ctx: "ExportContext", out: Path, *, workspace_gb: float, max_batch: int, opt_batch: int, timing_cache: str,
    calib_images: int, calib_batch: int,
) -> dict[str, Any]:
    batches = ctx.calibration_batches(calib_images, calib_batch)
    calib_cache = _timing_cache(ctx, "").with_name(f"tensorrt-int8-{ctx.checkpoint_sha256[:12]}-{calib_images}.calib")
    info = build_engine(ctx.onnx_fp32(), out, precision="int8", calibration=batches, calib_batch=calib_batch,
                        calib_cache=calib_cache, timing_cache=_timing_cache(ctx, timing_cache), workspace_gb=workspace_gb,
                        opt_batch=opt_batch, max_batch=max(max_batch, calib_batch))
    info.update(calibrator="IInt8EntropyCalibrator2", calib_images=batches.n_images, calib_cache=str(calib_cache))
    return info


def precheck_fp16(ctx: "ExportContext", out: Path) -> dict[str, Any]:
    """The CPU stand-in for a TensorRT FP16 engine: the FP32 ONNX graph with the input, weights
    (clamped to the FP16 range, as TensorRT does) and every intermediate tensor rounded to FP16,
    run by ONNX Runtime. It shows FP16 overflow (Inf/NaN) and rounding; it cannot show the kernel
    choices TensorRT makes on the device."""
    from ..onnx.export import fp16_storage_graph

    info = fp16_storage_graph(ctx.onnx_fp32(), out)
    return {**info, "stands_in_for": "tensorrt-fp16", "runtime": "onnxruntime CPU"}
