"""The export target registry: one declarative table of what ``edgederm export`` can make.

Each target is a small build function registered with what the rest of the pipeline needs to
know about it — the runtime format and file suffix, the precision, the pip extra and importable
modules it needs, the hardware it needs, its options (typed, with defaults and choices) and the
quantization recipes ``--recipe auto`` tries. ``TARGETS`` drives the CLI choices, option
validation, the Markdown table in the docs (``targets_table``), availability checks (a missing
extra or missing hardware is one precise line), typo suggestions and the parametrized tests.

A build function has the signature ``build(ctx: ExportContext, out: Path, **options) -> dict``:
it writes the artifact at ``out`` (OpenVINO also writes the ``.bin`` next to it) and returns what
it did (quantization recipe, converter versions, ...), which goes into the card. It does *not*
embed the card or gate the artifact: the driver (``edgederm.export.run``) does both for every
target in the same way.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from ..errors import EdgedermError, MissingExtraError

if TYPE_CHECKING:
    from .context import ExportContext

log = logging.getLogger(__name__)

BuildFn = Callable[..., dict[str, Any]]

#: Hardware requirement names a target may declare, with how to tell whether it is present.
HARDWARE = {"nvidia-gpu": "an NVIDIA GPU with a working CUDA driver"}


class MissingHardwareError(EdgedermError):
    """A target needs hardware (and possibly packages) this machine does not have."""


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
class Target:
    name: str
    format: str  # runtime backend name (edgederm.runtime.registry.BACKENDS)
    suffix: str  # artifact file suffix, with the dot
    precision: str  # fp32 | fp16 | int8 | mixed
    build: BuildFn
    extra: str | None = None  # pip extra: pip install 'edgederm[extra]'
    modules: tuple[str, ...] = ()  # importable modules the build needs
    hardware: str | None = None  # a key of HARDWARE
    options: Mapping[str, Option] = field(default_factory=dict)
    description: str = ""
    auto: tuple[Recipe, ...] = ()  # --recipe auto, fastest first, safest last

    # -- availability --------------------------------------------------------------------------
    def missing_modules(self) -> list[str]:
        return [m for m in self.modules if not _module_available(m)]

    def missing_hardware(self) -> str | None:
        if self.hardware is None:
            return None
        return None if hardware_available(self.hardware) else HARDWARE.get(self.hardware, self.hardware)

    def unavailable_reason(self) -> str | None:
        """Why this machine cannot build the target (one line), or None."""
        try:
            self.check_available()
        except EdgedermError as e:
            return str(e)
        return None

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def check_available(self) -> None:
        """Raise ``MissingExtraError`` (missing package) or ``MissingHardwareError`` (missing
        hardware, with whatever packages are missing too) — one actionable line."""
        missing = self.missing_modules()
        hw = self.missing_hardware()
        if hw is None and not missing:
            return
        if hw is None:
            raise MissingExtraError(self.extra or self.name, missing[0], f"the {self.name} target")
        missing_here = [f"{hw} (none found)"]
        missing_here += [f"the {m!r} package (pip install 'edgederm[{self.extra}]')" for m in missing]
        needs = " and ".join([hw] + [f"the {m!r} package" for m in self.modules])
        msg = f"target {self.name} needs {needs}; missing here: {', '.join(missing_here)}"
        if self.name in PRECHECKS:
            msg += f". Check the numerics here first: edgederm export RUN --target {self.name} --precheck"
        raise MissingHardwareError(msg)

    # -- options -------------------------------------------------------------------------------
    def resolve_options(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``given`` (parsed, checked); unknown keys fail with a hint."""
        given = dict(given or {})
        out = {k: o.default for k, o in self.options.items()}
        for key, value in given.items():
            if key not in self.options:
                known = list(self.options)
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                takes = ", ".join(known) if known else "no options"
                raise EdgedermError(f"target {self.name} has no option {key!r}{hint}; it takes: {takes}")
            out[key] = self.options[key].parse(value, where=f"{self.name} option {key}")
        return out


TARGETS: dict[str, Target] = {}
BUILTIN_ORDER = (
    "onnx", "onnx-fp16", "onnx-int8", "openvino", "openvino-int8",
    "tflite", "tflite-fp16", "tflite-int8", "tensorrt-fp16", "tensorrt-int8",
)
#: Targets that have a CPU ``--precheck`` (name → function(ctx, **kw) -> dict).
PRECHECKS: dict[str, Callable[..., dict[str, Any]]] = {}


def register_target(
    name: str,
    *,
    format: str,
    suffix: str,
    precision: str,
    extra: str | None = None,
    modules: Sequence[str] = (),
    hardware: str | None = None,
    options: Mapping[str, Option] | None = None,
    description: str = "",
    auto: Sequence[Recipe] = (),
    replace: bool = False,
) -> Callable[[BuildFn], BuildFn]:
    """Decorator: register ``build(ctx, out, **options) -> dict`` as export target ``name``."""
    if hardware is not None and hardware not in HARDWARE:
        raise ValueError(f"unknown hardware requirement {hardware!r}; known: {sorted(HARDWARE)}")

    def deco(fn: BuildFn) -> BuildFn:
        if name in TARGETS and not replace:
            raise ValueError(f"export target {name!r} is already registered")
        TARGETS[name] = Target(
            name=name, format=format, suffix=suffix, precision=precision, build=fn, extra=extra,
            modules=tuple(modules), hardware=hardware, options=dict(options or {}),
            description=description, auto=tuple(auto),
        )
        return fn

    return deco


def register_precheck(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    def deco(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        PRECHECKS[name] = fn
        return fn

    return deco


def get_target(name: str) -> Target:
    """The target called ``name``; a typo gets the closest name."""
    _load_builtin()
    key = name.strip().lower()
    if key in TARGETS:
        return TARGETS[key]
    close = difflib.get_close_matches(key, list(TARGETS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise EdgedermError(f"unknown export target {name!r}{hint}; known: {', '.join(TARGETS)}")


def resolve_targets(names: str | Iterable[str]) -> tuple[list[Target], bool]:
    """Targets for ``names`` (a list, a comma-separated string, or ``all``) and whether it was ``all``."""
    _load_builtin()
    if isinstance(names, str):
        names = [names]
    flat = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    if not flat:
        raise EdgedermError(f"no export target given; choose from: all, {', '.join(TARGETS)}")
    if any(n.lower() == "all" for n in flat):
        if len(flat) > 1:
            raise EdgedermError("--target all cannot be combined with other targets")
        return list(TARGETS.values()), True
    out: list[Target] = []
    for n in flat:
        t = get_target(n)
        if t not in out:
            out.append(t)
    return out, False


def list_targets() -> list[Target]:
    _load_builtin()
    return list(TARGETS.values())


def targets_table(*, availability: bool = False) -> str:
    """The Markdown table of export targets (for README/docs; ``availability`` adds this
    machine's verdict)."""
    _load_builtin()
    head = ["target", "format", "file", "precision", "needs", "options", "`--recipe auto` tries", "what"]
    if availability:
        head.append("here")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in TARGETS.values():
        needs = []
        if t.extra:
            needs.append(f"`edgederm[{t.extra}]`")
        if t.hardware:
            needs.append(HARDWARE[t.hardware])
        # Choices are written a|b|c; inside a Markdown table cell the bar must be escaped.
        opts = "<br>".join(f"`{k}`: {o.describe()}".replace("|", "\\|") for k, o in t.options.items()) or "—"
        auto = " → ".join(r.name for r in t.auto) or "—"
        row = [f"`{t.name}`", t.format, f"`model{t.suffix}`", t.precision, ", ".join(needs) or "—", opts, auto, t.description]
        if availability:
            reason = t.unavailable_reason()
            row.append("yes" if reason is None else "no")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# -- helpers --------------------------------------------------------------------------------------
def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


@functools.lru_cache(maxsize=None)
def hardware_available(kind: str) -> bool:
    """Whether this machine has ``kind`` hardware (cached: it does not change while running)."""
    if kind != "nvidia-gpu":
        return False
    try:
        import torch

        if torch.cuda.is_available() and torch.version.cuda is not None:
            return True
    except Exception:  # a broken CUDA install is a missing GPU for our purposes
        pass
    if Path("/etc/nv_tegra_release").exists():  # Jetson: integrated GPU, no nvidia-smi
        return True
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
            return out.returncode == 0 and "GPU" in out.stdout
        except (OSError, subprocess.SubprocessError):
            return False
    return False


@functools.lru_cache(maxsize=1)
def _load_builtin_once() -> None:
    # Target modules register themselves on import; they import their heavy toolkits lazily.
    from . import onnx as _onnx  # noqa: F401
    from . import tensorrt as _tensorrt  # noqa: F401

    # Canonical order (docs table, `--target all`): by toolkit, then fp32 → fp16 → int8.
    order = {n: i for i, n in enumerate(BUILTIN_ORDER)}
    items = sorted(TARGETS.items(), key=lambda kv: order.get(kv[0], len(order)))
    TARGETS.clear()
    TARGETS.update(items)


def _load_builtin() -> None:
    _load_builtin_once()


# -- targets whose exporters live in other modules ----------------------------------------------
# OpenVINO and TFLite conversion live in edgederm.export.openvino / edgederm.export.tflite; the
# entries here only declare them and call those functions lazily, so the registry (and `--target
# all`, the docs table, the tests) knows every target even where a toolkit is not installed.
def _external(module: str, func: str, target: str) -> Callable[..., dict[str, Any]]:
    import importlib

    full = f"edgederm.export.{module}"
    try:
        mod = importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name == full:
            raise EdgedermError(f"target {target}: this edgederm install has no {module} exporter ({full} is missing)") from None
        raise
    fn = getattr(mod, func, None)
    if fn is None:
        raise EdgedermError(f"target {target}: {full} has no {func}() (edgederm version mismatch)")
    return fn


_CALIB = Option(300, "calibration images from the train split (class-balanced)")


@register_target(
    "openvino", format="openvino", suffix=".xml", precision="fp16", extra="openvino", modules=("openvino",),
    options={"compress_to_fp16": Option(True, "store weights in FP16 (computed in FP32 on CPUs without FP16)")},
    description="OpenVINO IR (.xml + .bin), FP16 weights",
)
def _build_openvino(ctx: "ExportContext", out: Path, *, compress_to_fp16: bool) -> dict[str, Any]:
    fn = _external("openvino", "export_openvino", "openvino")
    info = dict(fn(ctx.model, ctx.example(), out, onnx_path=ctx.onnx_fp32(), compress_to_fp16=compress_to_fp16) or {})
    info.setdefault("precision", "fp16" if compress_to_fp16 else "fp32")
    return info


@register_target(
    "openvino-int8", format="openvino", suffix=".xml", precision="int8", extra="openvino", modules=("openvino", "nncf"),
    options={
        "preset": Option("performance", "NNCF preset (symmetric / mixed activations)", choices=("performance", "mixed")),
        "subset_size": _CALIB,
        "accuracy_control": Option(False, "nncf.quantize_with_accuracy_control with BACC as the metric"),
        "max_drop": Option(0.01, "accuracy control: largest BACC drop allowed (absolute)", type=float),
    },
    auto=(
        Recipe("int8-performance", {"preset": "performance"}, description="NNCF PTQ, symmetric activations"),
        Recipe("int8-mixed", {"preset": "mixed"}, description="NNCF PTQ, asymmetric activations"),
        Recipe("int8-accuracy-control", {"accuracy_control": True}, description="layers that cost BACC reverted to float"),
        Recipe("fp16", target="openvino", description="FP16 IR"),
    ),
    description="OpenVINO IR, NNCF post-training INT8 (optionally with accuracy control)",
)
def _build_openvino_int8(
    ctx: "ExportContext", out: Path, *, preset: str, subset_size: int, accuracy_control: bool, max_drop: float
) -> dict[str, Any]:
    fn = _external("openvino", "quantize_openvino", "openvino-int8")
    # Accuracy control measures BACC on train-split images, never on validation: validation is
    # what the gate judges the artifact on afterwards.
    validate = ctx.bacc_validator() if accuracy_control else None
    info = fn(
        ctx.model, ctx.example(), ctx.calibration_batches(subset_size, 1), out, onnx_path=ctx.onnx_fp32(),
        subset_size=subset_size, preset=preset, validate=validate, max_drop=max_drop if accuracy_control else None,
    )
    return {"preset": preset, "subset_size": subset_size, "accuracy_control": accuracy_control, **dict(info or {})}


def _tflite(precision: str) -> BuildFn:
    def build(ctx: "ExportContext", out: Path, **opts: Any) -> dict[str, Any]:
        fn = _external("tflite", "export_tflite", f"tflite{'' if precision == 'fp32' else '-' + precision}")
        calib = ctx.calibration_batches(int(opts["calib_images"]), 1) if precision == "int8" else None
        info = fn(ctx.model, ctx.example(), out, precision=precision, calibration=calib)
        return {"precision": precision, **dict(info or {})}

    return build


register_target(
    "tflite", format="tflite", suffix=".tflite", precision="fp32", extra="tflite", modules=("litert_torch", "ai_edge_litert"),
    description="TFLite / LiteRT via litert-torch, FP32",
)(_tflite("fp32"))
register_target(
    "tflite-fp16", format="tflite", suffix=".tflite", precision="fp16", extra="tflite", modules=("litert_torch", "ai_edge_litert"),
    description="TFLite / LiteRT, FP16 weights",
)(_tflite("fp16"))
register_target(
    "tflite-int8", format="tflite", suffix=".tflite", precision="int8", extra="tflite", modules=("litert_torch", "ai_edge_litert"),
    options={"calib_images": _CALIB},
    auto=(Recipe("int8-full-integer"), Recipe("fp16", target="tflite-fp16")),
    description="TFLite / LiteRT, full-integer INT8 calibrated on train images",
)(_tflite("int8"))
