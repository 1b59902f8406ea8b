"""The one table of artifact formats: what a file of each format looks like, what opens it, what
makes it.

Every fact about a format lives in its row: the file suffixes, the companion files that travel
with it (OpenVINO's ``.bin``), the pip extra and importable module its runtime needs, the name
benchmarks report for its runtime, the modules that hold its card reader, runtime and exporter
(imported lazily, so that listing formats imports no toolkit) and the export targets it offers,
with their options and the ``--recipe auto`` ladder. The runtime loader
(``edgederm.runtime.registry``), the export registry (``edgederm.export.registry``), the gate,
the bench and the docs table read these rows; nothing else maps a suffix to a format.

Adding a format is a folder ``edgederm/formats/<name>/`` (``metadata.py``: read/write the card
text inside a file; ``runtime.py``: ``open(path, card, **options) -> Predictor``; ``export.py``:
build functions; ``ops.py``: ``count_ops(path, info=None)``, what the file computes in, from which
``edgederm.formats.precision`` derives the precision the card records) and one row below.

This module imports nothing from the rest of edgederm except ``errors``: everything else may
import it without forming an import cycle.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import EdgedermError

#: Key under which the card's JSON is stored inside an artifact (ONNX metadata_props, TFLite
#: metadata, OpenVINO rt_info, ExecuTorch constant method).
EMBED_KEY = "edgederm.card"


@dataclass(frozen=True)
class Option:
    """One build option of a target: a typed value with a default, optional choices and help.

    Values coming from the command line are strings; ``parse`` converts them (``"true"`` → True,
    ``"300"`` → 300) and checks the choices, so a typo fails before any work is done.
    """

    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    type: type | None = None  # default: type(default)

    @property
    def kind(self) -> type:
        return self.type or type(self.default)

    def parse(self, value: Any, *, where: str) -> Any:
        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                out: Any = value
            elif str(value).strip().lower() in ("1", "true", "yes", "on"):
                out = True
            elif str(value).strip().lower() in ("0", "false", "no", "off"):
                out = False
            else:
                raise EdgedermError(f"{where}: expected true or false, got {value!r}")
        elif kind in (int, float):
            try:
                out = kind(value)
            except (TypeError, ValueError):
                raise EdgedermError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        else:
            out = value if value is None else str(value)
        if self.choices is not None and out not in self.choices:
            close = difflib.get_close_matches(str(out), [str(c) for c in self.choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise EdgedermError(f"{where}: {out!r} is not one of {', '.join(map(str, self.choices))}{hint}")
        return out

    def describe(self) -> str:
        if self.choices:
            return "|".join(map(str, self.choices)) + f" (default {self.default})"
        return f"{self.default!r}" if self.default is not None else "—"


@dataclass(frozen=True)
class Recipe:
    """One step of ``--recipe auto``: options for this target, or another target to fall back to
    (e.g. FP16 after every INT8 variant failed the gate)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    target: str | None = None  # None: this target
    description: str = ""


@dataclass(frozen=True)
class TargetSpec:
    """An export target a format offers: ``build`` names a function of the format's exporter,
    ``build(ctx, out, **options) -> dict``."""

    name: str
    precision: str  # fp32 | fp16 | int8 | mixed: what the recipe aims for (the card records what the file holds, edgederm.formats.precision)
    build: str
    description: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)
    auto: tuple[Recipe, ...] = ()  # --recipe auto, fastest first, safest last
    modules: tuple[str, ...] = ()  # importable modules the build needs (default: the format's)
    hardware: str | None = None  # a key of edgederm.export.registry.HARDWARE
    precheck: str | None = None  # a CPU stand-in check in the exporter (``--precheck``)


@dataclass(frozen=True)
class Format:
    """One artifact format (one runtime backend)."""

    name: str
    suffixes: tuple[str, ...]
    label: str  # the runtime's name in benchmark results
    runtime: str  # "module:callable" -> open(path, card, **options) -> Predictor
    metadata: str | None = None  # module with read_card_text(path) / write_card_text(path, text)
    ops: str | None = None  # "module:callable" -> count_ops(path, info=None) -> OpCount (edgederm.formats.precision)
    exporter: str | None = None  # module holding the build functions of ``targets``
    extra: str | None = None  # pip extra: pip install 'edgederm[extra]'
    module: str | None = None  # importable module the runtime needs
    preload: tuple[str, ...] = ()  # modules imported before a load (bench: import time vs cold start)
    companions: tuple[str, ...] = ()  # suffixes of files that travel with the artifact (".bin")
    folder: bool = False  # the artifact is a folder (e.g. a .mlpackage)
    batch_option: bool = False  # open() takes batch=N and compiles for it
    runner: str | None = None  # runtime name of bench/runner.py on a remote host (None: not run remotely)
    targets: tuple[TargetSpec, ...] = ()
    note: str = ""

    def matches(self, path: str | Path) -> bool:
        return str(path).lower().endswith(self.suffixes)

    def companion_files(self, path: str | Path) -> list[Path]:
        """The companion files of an artifact that exist beside it."""
        p = Path(path)
        return [c for c in (p.with_suffix(s) for s in self.companions) if c.exists()]

    def runtime_available(self) -> bool:
        import importlib.util

        if self.module is None:
            return True
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


def load_attr(ref: str) -> Any:
    """``"package.module:name"`` → the object (imports the module)."""
    module, _, name = ref.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, name) if name else mod


_TRT_COMMON = {
    "workspace_gb": Option(2.0, "builder workspace memory pool (GiB)", type=float),
    "max_batch": Option(8, "largest batch of the optimisation profile"),
    "opt_batch": Option(1, "batch the kernels are tuned for"),
    "timing_cache": Option("", "timing cache file (default: <export dir>/tensorrt.timing.cache)", type=str),
}
_CALIB = Option(300, "calibration images from the train split (class-balanced)")

_P = "edgederm.formats."

#: Every format, in canonical order (docs table, ``--target all``): by toolkit, FP32 → FP16 → INT8.
FORMATS: dict[str, Format] = {}


def register_format(fmt: Format, *, replace: bool = False) -> Format:
    """Add a row (plugins; the built-in rows are below)."""
    if fmt.name in FORMATS and not replace:
        raise ValueError(f"format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


for _fmt in (
    Format(
        name="torch", suffixes=(".pt", ".pth", ".ckpt"), label="pytorch-eager",
        runtime=_P + "torch.runtime:TorchPredictor", metadata=_P + "torch.metadata", module="torch",
        preload=("torch", "edgederm.checkpoint", "edgederm.models"),
        note="the FP32 reference every artifact is gated against (an edgederm checkpoint)",
    ),
    Format(
        name="onnx", suffixes=(".onnx",), label="onnxruntime", runtime=_P + "onnx.runtime:OnnxPredictor",
        metadata=_P + "onnx.metadata", ops=_P + "onnx.ops:count_ops", exporter=_P + "onnx.export", extra="onnx", module="onnxruntime",
        preload=("onnxruntime", "onnx"), runner="onnxruntime",
        targets=(
            TargetSpec("onnx", "fp32", "build_onnx", modules=("onnx", "onnxruntime"),
                       description="ONNX (torch.onnx legacy exporter, opset 17, dynamic batch), FP32"),
            TargetSpec("onnx-fp16", "fp16", "build_onnx_fp16", modules=("onnx", "onnxruntime", "onnxconverter_common"),
                       options={"keep_io_types": Option(True, "keep float32 inputs/outputs (the runtime feeds float32)")},
                       description="ONNX with FP16 weights and compute (half the file; ORT CPUs compute it in FP32)"),
            TargetSpec(
                "onnx-int8", "int8", "build_onnx_int8", modules=("onnx", "onnxruntime"),
                options={
                    "method": Option("static", "static: QDQ with calibrated activations; dynamic: weight-only INT8", choices=("static", "dynamic")),
                    "per_channel": Option(True, "per-channel weight scales (else per-tensor)"),
                    "calibration": Option("minmax", "activation range estimator", choices=("minmax", "entropy", "percentile")),
                    "percentile": Option(99.999, "percentile calibration: the kept percentile", type=float),
                    "activations": Option("uint8", "activation type (uint8 is faster on x86 without VNNI)", choices=("uint8", "int8")),
                    "reduce_range": Option(False, "7-bit weights (avoids u8s8 saturation on old x86)"),
                    "calib_images": Option(200, "calibration images from the train split (class-balanced)"),
                    "calib_batch": Option(8, "calibration batch size"),
                    "keep_float": Option("none", "layers left in float", choices=("none", "first-last", "sensitive")),
                    "n_sensitive": Option(3, "keep_float=sensitive: how many highest-error layers"),
                    "exclude": Option("", "comma-separated node names to leave in float", type=str),
                },
                auto=(
                    Recipe("int8-per-channel", {"per_channel": True}, description="static QDQ, u8 activations, s8 per-channel weights"),
                    Recipe("int8-sensitive-float", {"keep_float": "sensitive", "n_sensitive": 3},
                           description="the 3 layers with the largest per-layer error in float"),
                    Recipe("int8-first-last-float", {"keep_float": "first-last"}, description="first and last layer in float"),
                    Recipe("fp16", target="onnx-fp16", description="FP16 graph"),
                ),
                description="ONNX Runtime INT8: static QDQ (per-channel/per-tensor, MinMax/Entropy/Percentile) or dynamic weight-only",
            ),
        ),
    ),
    Format(
        name="openvino", suffixes=(".xml",), label="openvino", runtime=_P + "openvino.runtime:OpenVinoPredictor",
        metadata=_P + "openvino.metadata", ops=_P + "openvino.ops:count_ops", exporter=_P + "openvino.export", extra="openvino", module="openvino",
        preload=("openvino",), companions=(".bin",), batch_option=True, runner="openvino",
        targets=(
            TargetSpec("openvino", "fp16", "build_openvino", modules=("openvino",),
                       options={"compress_to_fp16": Option(True, "store weights in FP16 (computed in FP32 on CPUs without FP16)")},
                       description="OpenVINO IR (.xml + .bin), FP16 weights"),
            TargetSpec(
                "openvino-int8", "int8", "build_openvino_int8", modules=("openvino", "nncf"),
                options={
                    "preset": Option("performance", "NNCF preset (symmetric / mixed activations)", choices=("performance", "mixed")),
                    "subset_size": _CALIB,
                    "accuracy_control": Option(False, "nncf.quantize_with_accuracy_control with BACC as the metric"),
                    "max_drop": Option(0.01, "accuracy control: largest BACC drop allowed (absolute)", type=float),
                    "fast_bias_correction": Option(False, "NNCF's fast bias correction (false: the full one, measured "
                                                          "1.3 dB better at the logits, docs/quantization.md)"),
                    "qat": Option(False, "quantization-aware fine-tuning (NNCF QAT, distilled from FP32 on train images)"),
                    "qat_epochs": Option(2, "qat: fine-tuning epochs"),
                    "qat_images": Option(600, "qat: train-split images per epoch (class-balanced)"),
                    "qat_lr": Option(1e-5, "qat: Adam learning rate (5e-5 diverged on the synthetic student)", type=float),
                },
                auto=(
                    Recipe("int8-performance", {"preset": "performance"}, description="NNCF PTQ, symmetric activations"),
                    Recipe("int8-mixed", {"preset": "mixed"}, description="NNCF PTQ, asymmetric activations"),
                    Recipe("int8-accuracy-control", {"accuracy_control": True}, description="layers that cost BACC reverted to float"),
                    Recipe("int8-qat", {"qat": True}, description="NNCF quantization-aware fine-tuning distilled from FP32 (minutes on a CPU)"),
                    Recipe("fp16", target="openvino", description="FP16 IR"),
                ),
                description="OpenVINO IR, NNCF post-training INT8 (optionally with accuracy control) or quantization-aware fine-tuning",
            ),
        ),
    ),
    Format(
        name="tflite", suffixes=(".tflite",), label="litert", runtime=_P + "tflite.runtime:TFLitePredictor",
        metadata=_P + "tflite.metadata", ops=_P + "tflite.ops:count_ops", exporter=_P + "tflite.export", extra="tflite", module="ai_edge_litert",
        preload=("ai_edge_litert.interpreter", "ai_edge_litert.schema_py_generated"), runner="litert",
        targets=(
            TargetSpec("tflite", "fp32", "build_tflite", modules=("litert_torch", "ai_edge_litert"),
                       description="TFLite / LiteRT via litert-torch, FP32"),
            TargetSpec("tflite-fp16", "fp16", "build_tflite_fp16", modules=("litert_torch", "ai_edge_litert"),
                       description="TFLite / LiteRT, FP16 weights"),
            TargetSpec("tflite-int8", "int8", "build_tflite_int8", modules=("litert_torch", "ai_edge_litert"),
                       options={"calib_images": _CALIB},
                       auto=(Recipe("int8-full-integer"), Recipe("fp16", target="tflite-fp16")),
                       description="TFLite / LiteRT, full-integer INT8 calibrated on train images"),
        ),
    ),
    Format(
        name="tensorrt", suffixes=(".engine", ".plan"), label="tensorrt", runtime=_P + "tensorrt.runtime:TensorRTPredictor",
        metadata=None, exporter=_P + "tensorrt.export", extra="tensorrt", module="tensorrt",
        preload=("tensorrt", "torch"), runner="trtexec",
        note="engines hold no metadata: the card is the .card.json sidecar",
        targets=(
            TargetSpec("tensorrt-fp16", "fp16", "build_tensorrt_fp16", modules=("tensorrt",), hardware="nvidia-gpu",
                       options=dict(_TRT_COMMON), precheck="precheck_fp16",
                       description="TensorRT engine, FP16 (build on the target GPU, e.g. the Jetson)"),
            TargetSpec(
                "tensorrt-int8", "int8", "build_tensorrt_int8", modules=("tensorrt",), hardware="nvidia-gpu",
                options={**_TRT_COMMON, "calib_images": Option(300, "calibration images from the train split"),
                         "calib_batch": Option(8, "calibration batch")},
                auto=(Recipe("int8-entropy-calibrated"), Recipe("fp16", target="tensorrt-fp16")),
                description="TensorRT engine, INT8 with an entropy calibrator on train images (FP16 fallback per layer)",
            ),
        ),
    ),
    Format(
        name="executorch", suffixes=(".pte",), label="executorch-xnnpack",
        runtime=_P + "executorch.runtime:ExecuTorchPredictor", metadata=_P + "executorch.metadata",
        ops=_P + "executorch.ops:count_ops",
        exporter=_P + "executorch.export", extra="executorch", module="executorch",
        preload=("torch", "executorch.runtime"),
        note="PyTorch's on-device runtime (Android/iOS); the card is the program's edgederm_card method",
        targets=(
            TargetSpec("executorch", "fp32", "build_executorch", modules=("executorch",),
                       description="ExecuTorch program (.pte), XNNPACK delegate, FP32"),
            TargetSpec("executorch-int8", "int8", "build_executorch_int8", modules=("executorch", "torchao"),
                       options={"calib_images": _CALIB},
                       auto=(Recipe("int8-pt2e-xnnpack"), Recipe("fp32", target="executorch", description="FP32 program")),
                       description="ExecuTorch, PT2E static INT8 (XNNPACKQuantizer, per-channel) calibrated on train images"),
        ),
    ),
):
    register_format(_fmt)


# -- lookups ----------------------------------------------------------------------------------------
def get_format(name: str) -> Format:
    if name not in FORMATS:
        close = difflib.get_close_matches(name, list(FORMATS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EdgedermError(f"unknown artifact format {name!r}{hint}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_for(path: str | Path) -> Format:
    """The format of an artifact, from its name; one line naming the known suffixes otherwise."""
    for fmt in FORMATS.values():
        if fmt.matches(path):
            return fmt
    raise EdgedermError(f"{path}: unknown artifact format (known suffixes: {', '.join(artifact_suffixes())})")


def find_format(path: str | Path) -> Format | None:
    for fmt in FORMATS.values():
        if fmt.matches(path):
            return fmt
    return None


def artifact_suffixes() -> tuple[str, ...]:
    return tuple(s for fmt in FORMATS.values() for s in fmt.suffixes)


def is_artifact(path: Path) -> bool:
    """Whether ``path`` is an artifact by its name (a file, or a folder for folder formats)."""
    fmt = find_format(path)
    if fmt is None:
        return False
    return path.is_dir() if fmt.folder else path.is_file()


def read_card_text(path: str | Path) -> str | None:
    """The card JSON embedded in an artifact, or None when its format embeds none (or it has none).

    Raises the format's one-line ``EdgedermError`` for a file it cannot read."""
    fmt = format_for(path)
    if fmt.metadata is None:
        return None
    reader: Callable[[Path], str | None] = load_attr(fmt.metadata + ":read_card_text")
    return reader(Path(path))


def write_card_text(path: str | Path, text: str) -> None:
    """Embed the card JSON in the artifact (replacing an older one), atomically."""
    fmt = format_for(path)
    if fmt.metadata is None:
        raise EdgedermError(f"{path}: {fmt.name} artifacts cannot embed a card ({fmt.note or 'sidecar only'})")
    writer: Callable[[Path, str], None] = load_attr(fmt.metadata + ":write_card_text")
    writer(Path(path), text)


def can_embed(name: str) -> bool:
    fmt = get_format(name)
    if fmt.metadata is None:
        return False
    return hasattr(load_attr(fmt.metadata), "write_card_text")
