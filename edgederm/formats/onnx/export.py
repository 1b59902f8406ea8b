"""ONNX targets: FP32 (the torch.onnx graph), FP16 (onnxconverter-common) and INT8 (ONNX Runtime
static QDQ quantization, or weight-only dynamic quantization as a recipe).

INT8 defaults follow what was measured on x86 CPUs without VNNI (see the toolchain notes):
**unsigned activations (QUInt8) with signed per-channel weights (QInt8)** run 1.5–2.4× faster
than ORT's signed-activation default. Calibration images come from the run's train split,
class-balanced (``ExportContext.calibration_batches``). ``quant_pre_process`` (shape inference +
graph optimisation) runs first, as ORT recommends.

Sensitive layers: ``keep_float=sensitive`` leaves the ``n_sensitive`` layers with the largest
per-layer error in float, measured with ORT's ``qdq_loss_debug`` on calibration images: the drop
in signal-to-quantization-noise ratio (dB) between a layer's input and its output in the fully
quantized model. ``keep_float=first-last`` leaves the first and the last quantizable layer in
float (the classic recipe for small CNNs; not always better — on an EfficientNet-Lite0 it was
worse than all-INT8, which is why ``--recipe auto`` lets the gate decide).

Shape arithmetic is never quantized: a dynamic batch keeps float shape math in the graph (e.g.
timm's TF-"same" padding), and quantizing it to 8 bits corrupts the padding
(``shape_subgraph``).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ...provenance import package_version

if TYPE_CHECKING:
    from ...export.context import ExportContext

log = logging.getLogger(__name__)

QUANTIZABLE = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_CALIBRATION = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}  # the table's "calibration" choices


# -- FP32 -----------------------------------------------------------------------------------------
def build_onnx(ctx: "ExportContext", out: Path) -> dict[str, Any]:
    shutil.copyfile(ctx.onnx_fp32(), out)
    return {"exporter": "torch.onnx (dynamo=False)", "opset": 17, "torch": package_version("torch"), "onnx": package_version("onnx")}


# -- FP16 -----------------------------------------------------------------------------------------
def fp16_graph(src: str | Path, out: str | Path, *, keep_io_types: bool = True) -> dict[str, Any]:
    """Convert an FP32 ONNX graph to FP16 (inputs/outputs stay float32 with ``keep_io_types``).

    onnxconverter-common first; if its graph does not load in ONNX Runtime (it mistypes float
    shape arithmetic, e.g. the dynamic 'same' padding of timm's EfficientNet-Lite stem), ONNX
    Runtime's maintained copy of the same converter (``onnxruntime.transformers.float16``)."""
    import warnings

    import onnx
    import onnxruntime as ort
    from onnxconverter_common import float16

    errors: list[str] = []
    for name, convert in (("onnxconverter-common", float16.convert_float_to_float16), ("onnxruntime.transformers", None)):
        if convert is None:
            from onnxruntime.transformers import float16 as ort_float16

            convert = ort_float16.convert_float_to_float16
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            half = convert(onnx.load(str(src)), keep_io_types=keep_io_types)
        try:
            ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as e:  # an invalid graph: try the next converter
            errors.append(f"{name}: {str(e).splitlines()[0][:200]}")
            log.info("FP16 conversion with %s gives a graph ONNX Runtime rejects; trying the next converter", name)
            continue
        # The converters warn per weight tensor with values they move into their range
        # (|x| < 1e-7 → 1e-7, |x| > 1e4 → 1e4): count them; the gate measures what it costs.
        clamped = sum(1 for w in caught if "truncated" in str(w.message))
        if clamped:
            log.info("FP16 conversion clamped values of %d weight tensors into the range [1e-7, 1e4]", clamped)
        onnx.save(half, str(out))
        dist = "onnxconverter-common" if name == "onnxconverter-common" else "onnxruntime"
        return {"converter": f"{name} float16", "version": package_version(dist), "keep_io_types": keep_io_types,
                "tensors_clamped": clamped, **({"rejected": errors} if errors else {})}
    from ...errors import EdgedermError

    raise EdgedermError(f"FP16 conversion failed: {'; '.join(errors)}")


FP16_MAX = 65504.0


def fp16_storage_graph(src: str | Path, out: str | Path) -> dict[str, Any]:
    """An FP32 graph that rounds the input, every weight and every intermediate tensor to FP16
    (explicit Cast pairs), computing in FP32 in between — how FP16 engines (TensorRT, GPU and NPU
    delegates) hold tensors. ONNX Runtime on a CPU computes an FP16 graph in FP32 without
    rounding intermediates (its inserted casts are fused away), so overflow (|x| > 65504 → Inf,
    then NaN) would stay invisible there; explicit Cast pairs are kept and do round."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    g = model.graph
    is_float = {vi.name for vi in [*g.value_info, *g.output, *g.input] if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    clamped = 0
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        clamped += int((np.abs(arr) > FP16_MAX).sum())  # TensorRT clamps such weights too
        init.CopyFrom(numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32), init.name))

    def pair(name: str, raw: str) -> list[Any]:
        return [helper.make_node("Cast", [raw], [f"{name}__fp16"], to=TensorProto.FLOAT16, name=f"{name}__to_fp16"),
                helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__to_fp32")]

    nodes: list[Any] = []
    renamed: dict[str, str] = {}
    for inp in g.input:
        if inp.name in is_float:
            renamed[inp.name] = f"{inp.name}__rounded"
            nodes += pair(renamed[inp.name], inp.name)
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        tails: list[Any] = []
        for i, name in enumerate(node.output):
            if name in is_float:
                node.output[i] = f"{name}__fp32"
                tails += pair(name, f"{name}__fp32")
        nodes += [node, *tails]
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(model, str(out))
    return {"emulation": "FP16 storage of input, weights and every intermediate tensor (FP32 arithmetic)",
            "weights_clamped": clamped}


def fp16_nonfinite(graph: str | Path, batches: Iterable[np.ndarray]) -> tuple[int, int]:
    """(images with a non-finite output, images) when ``graph`` runs on ``batches``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    bad = total = 0
    for x in batches:
        y = sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        bad += int((~np.isfinite(y)).reshape(len(y), -1).any(axis=1).sum())
        total += len(y)
    return bad, total


def build_onnx_fp16(ctx: "ExportContext", out: Path, *, keep_io_types: bool) -> dict[str, Any]:
    return fp16_graph(ctx.onnx_fp32(), out, keep_io_types=keep_io_types)


# -- INT8 -----------------------------------------------------------------------------------------
class _Reader:
    """ONNX Runtime CalibrationDataReader over re-iterable batches."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str) -> None:
        self.batches = batches
        self.input_name = input_name
        self._it: Any = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(self.batches)
        x = next(self._it, None)
        return None if x is None else {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:
        self._it = None

    # ORT >= 1.16 checks the type, so subclass lazily (onnxruntime is an optional extra).
    @classmethod
    def make(cls, batches: Iterable[np.ndarray], input_name: str) -> Any:
        from onnxruntime.quantization import CalibrationDataReader

        reader_cls = type("EdgedermCalibrationReader", (cls, CalibrationDataReader), {})
        return reader_cls(batches, input_name)


def _preprocessed(ctx: "ExportContext") -> Path:
    """The FP32 graph after ``quant_pre_process``, with every node named (nodes_to_exclude
    refers to names), computed once per context."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = ctx.cache_dir / f"pre-{ctx.checkpoint_sha256[:16]}.onnx"
    if out.exists():
        return out
    tmp = out.with_suffix(".tmp.onnx")
    quant_pre_process(str(ctx.onnx_fp32()), str(tmp))
    model = onnx.load(str(tmp))
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out


# Inputs that carry shapes, sizes, pads or axes (by op type and input position).
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Pad": (1, 3),
    "Slice": (1, 2, 3, 4), "Resize": (1, 2, 3), "Upsample": (1,), "Unsqueeze": (1,), "Squeeze": (1,),
    "Range": (0, 1, 2), "TopK": (1,), "Split": (1,), "OneHot": (1,),
}


def shape_subgraph(model: Any) -> list[str]:
    """Nodes that compute shapes, not image features: everything upstream of a shape-like
    input, back to the ``Shape`` nodes that read the data. A dynamic batch keeps such arithmetic
    in the graph (e.g. timm's TF-'same' padding of EfficientNet-Lite: ceil/sub/mul in float), and
    ORT's QDQ quantizer would otherwise quantize those Add/Mul nodes to 8 bits — wrong padding."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    stack = [n.input[i] for n in nodes for i in SHAPE_INPUTS.get(n.op_type, ()) if i < len(n.input) and n.input[i]]
    seen: dict[str, None] = {}
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen[node.name] = None
        if node.op_type not in ("Shape", "Size"):
            stack.extend(i for i in node.input if i)
    return list(seen)


def quantizable_nodes(model: Any) -> list[str]:
    """Names of the quantizable compute nodes, in graph (topological) order."""
    return [n.name for n in model.graph.node if n.op_type in QUANTIZABLE]


def _first_last(model: Any) -> list[str]:
    names = quantizable_nodes(model)
    return list(dict.fromkeys([names[0], names[-1]])) if names else []


def quantize_static_qdq(
    src: str | Path,
    out: str | Path,
    batches: Iterable[np.ndarray],
    *,
    per_channel: bool = True,
    calibration: str = "minmax",
    percentile: float = 99.999,
    activations: str = "uint8",
    reduce_range: bool = False,
    nodes_to_exclude: list[str] | None = None,
) -> None:
    """ORT static quantization in QDQ format (src must be quant_pre_process'ed)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    extra: dict[str, Any] = {}
    if calibration == "percentile":
        extra["CalibPercentile"] = float(percentile)
    reader = _Reader.make(batches, input_name)
    cache_kw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgederm-calib-") as tmp:
        if calibration == "entropy":
            cache_kw["calibration_cache_path"] = _entropy_ranges(src, reader, Path(tmp))
        quantize_static(
            str(src), str(out), reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude or []),
            calibrate_method=getattr(CalibrationMethod, _CALIBRATION[calibration]),
            calibration_providers=["CPUExecutionProvider"],
            extra_options=extra,
            **cache_kw,
        )


def _entropy_ranges(src: str | Path, reader: Any, tmp: Path) -> Path:
    """Entropy (KL) calibration with a 2048-bin histogram, saved as an ORT calibration cache.

    ``quantize_static`` cannot set the histogram size and calibrates entropy with 128 bins onto
    128 quantized bins — a single candidate threshold, i.e. the MinMax range. So the ranges are
    computed with ORT's calibrator directly and handed over through ``calibration_cache_path``.
    """
    import inspect

    from onnxruntime.quantization import CalibrationMethod, quantize_static

    from ...errors import EdgedermError

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise EdgedermError("calibration=entropy needs a newer onnxruntime (one whose quantize_static takes "
                            "calibration_cache_path); use minmax or percentile, or upgrade onnxruntime")
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    calibrator = create_calibrator(
        Path(src), list(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(tmp / "augmented.onnx"), calibrate_method=CalibrationMethod.Entropy,
        providers=["CPUExecutionProvider"],
        extra_options={"symmetric": False, "num_bins": 2048, "num_quantized_bins": 128},
    )
    calibrator.collect_data(reader)
    reader.rewind()
    cache = tmp / "entropy-ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def layer_sensitivity(float_model: str | Path, qdq_model: str | Path, batches: Iterable[np.ndarray], workdir: Path) -> dict[str, float]:
    """Per quantizable node: how many dB of signal-to-quantization-noise ratio the fully quantized
    model loses across it (input SQNR − output SQNR, float vs QDQ activations on ``batches``).
    Larger = the layer adds more error."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    model = onnx.load(str(float_model))
    input_name = model.graph.input[0].name
    aug_f, aug_q = workdir / "aug_float.onnx", workdir / "aug_qdq.onnx"
    modify_model_output_intermediate_tensors(str(float_model), str(aug_f))
    modify_model_output_intermediate_tensors(str(qdq_model), str(aug_q))
    reader = _Reader.make(batches, input_name)
    float_acts = collect_activations(str(aug_f), reader)
    reader.rewind()
    qdq_acts = collect_activations(str(aug_q), reader)
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    sqnr = {t: float(e["xmodel_err"]) for t, e in errors.items() if "xmodel_err" in e}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def upstream_sqnr(tensor: str) -> float:
        # Walk back through ops without a match (e.g. a Relu fused away) to a measured tensor.
        for _ in range(8):
            if tensor in sqnr:
                return sqnr[tensor]
            node = producers.get(tensor)
            if node is None or not node.input:
                return math.inf  # a graph input: no error yet
            tensor = node.input[0]
        return math.inf

    def downstream_sqnr(tensor: str) -> float | None:
        for _ in range(8):
            if tensor in sqnr:
                return sqnr[tensor]
            nxt = consumers.get(tensor) or []
            if len(nxt) != 1 or not nxt[0].output:
                return None
            tensor = nxt[0].output[0]
        return None

    out: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE:
            continue
        s_out = downstream_sqnr(node.output[0])
        if s_out is None or not math.isfinite(s_out):
            continue
        s_in = upstream_sqnr(node.input[0])
        out[node.name] = (min(s_in, 100.0) if math.isfinite(s_in) else 100.0) - s_out
    return out


def build_onnx_int8(
    ctx: "ExportContext",
    out: Path,
    *,
    method: str,
    per_channel: bool,
    calibration: str,
    percentile: float,
    activations: str,
    reduce_range: bool,
    calib_images: int,
    calib_batch: int,
    keep_float: str,
    n_sensitive: int,
    exclude: str,
) -> dict[str, Any]:
    import onnx

    pre = _preprocessed(ctx)
    model = onnx.load(str(pre))
    excluded = [e.strip() for e in exclude.split(",") if e.strip()]
    unknown = [e for e in excluded if e not in {n.name for n in model.graph.node}]
    if unknown:
        from ...errors import EdgedermError

        raise EdgedermError(f"onnx-int8 option exclude: no node named {unknown[0]!r} (quantizable nodes: {', '.join(quantizable_nodes(model)[:8])} ...)")
    info: dict[str, Any] = {"onnxruntime": package_version("onnxruntime"), "method": method, "per_channel": per_channel}
    shape_math = shape_subgraph(model)
    if shape_math:
        info["shape_nodes_kept_float"] = len(shape_math)
    if method == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Weight-only: activations are quantized on the fly per batch; no calibration data.
        # ConvInteger runs with uint8 weights on ORT's CPU provider.
        quantize_dynamic(str(pre), str(out), per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QUInt8, nodes_to_exclude=excluded + shape_math)
        info.update(weights="uint8", activations="dynamic uint8", nodes_excluded=excluded)
        return info

    if keep_float == "first-last":
        excluded = list(dict.fromkeys(excluded + _first_last(model)))
    batches = ctx.calibration_batches(calib_images, calib_batch)
    common = dict(per_channel=per_channel, calibration=calibration, percentile=percentile,
                  activations=activations, reduce_range=reduce_range)
    if keep_float == "sensitive" and n_sensitive > 0:
        probe = ctx.cache_dir / f"probe-{ctx.checkpoint_sha256[:12]}.onnx"
        quantize_static_qdq(pre, probe, batches, nodes_to_exclude=shape_math, **common)  # type: ignore[arg-type]
        few = ctx.calibration_batches(min(calib_images, 4 * calib_batch), calib_batch)
        sens = layer_sensitivity(pre, probe, few, ctx.cache_dir)
        ranked = [n for n, _ in sorted(sens.items(), key=lambda kv: -kv[1]) if n not in excluded]
        excluded += ranked[:n_sensitive]
        info["sensitivity_db"] = {n: round(sens[n], 3) for n in ranked[: max(n_sensitive, 5)]}
        probe.unlink(missing_ok=True)
    quantize_static_qdq(pre, out, batches, nodes_to_exclude=excluded + shape_math, **common)  # type: ignore[arg-type]
    info.update(
        format="QDQ", calibration=calibration, activations=activations, weights="int8",
        reduce_range=reduce_range, calib_images=batches.n_images, keep_float=keep_float, nodes_excluded=excluded,
    )
    if calibration == "percentile":
        info["percentile"] = percentile
    return info
