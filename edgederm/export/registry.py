"""The export target registry: what ``edgederm export`` can make.

The targets are declared in the formats table (``edgederm.formats.table``: each format's row lists
its targets, their options and ``--recipe auto`` ladder, and names the build functions of its
``formats/<name>/export.py``); ``register_target`` adds one in code (plugins). Each target carries
what the rest of the pipeline needs to know about it — the runtime format and file suffix, the precision, the pip extra and importable
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
from ..formats.table import FORMATS, Option, Recipe, TargetSpec, load_attr

if TYPE_CHECKING:
    from .context import ExportContext

log = logging.getLogger(__name__)

BuildFn = Callable[..., dict[str, Any]]

#: Hardware requirement names a target may declare, with how to tell whether it is present.
HARDWARE = {"nvidia-gpu": "an NVIDIA GPU with a working CUDA driver"}


class MissingHardwareError(EdgedermError):
    """A target needs hardware (and possibly packages) this machine does not have."""


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


def _lazy_build(module: str, func: str, target: str) -> BuildFn:
    """The build function of a table row, imported on first use (listing targets imports no toolkit)."""

    def build(ctx: "ExportContext", out: Path, **options: Any) -> dict[str, Any]:
        try:
            fn = load_attr(f"{module}:{func}")
        except ModuleNotFoundError as e:
            if e.name == module:
                raise EdgedermError(f"target {target}: this edgederm install has no exporter module {module}") from None
            raise
        except AttributeError:
            raise EdgedermError(f"target {target}: {module} has no {func}() (edgederm version mismatch)") from None
        return dict(fn(ctx, out, **options) or {})

    build.__name__ = func
    build.__qualname__ = func
    return build


def target_from_spec(fmt_name: str, spec: TargetSpec) -> Target:
    fmt = FORMATS[fmt_name]
    if fmt.exporter is None:
        raise ValueError(f"format {fmt_name!r} has targets but no exporter module")
    return Target(
        name=spec.name, format=fmt.name, suffix=fmt.suffixes[0], precision=spec.precision,
        build=_lazy_build(fmt.exporter, spec.build, spec.name), extra=fmt.extra,
        modules=spec.modules or ((fmt.module,) if fmt.module else ()), hardware=spec.hardware,
        options=dict(spec.options), description=spec.description, auto=tuple(spec.auto),
    )


@functools.lru_cache(maxsize=1)
def _load_builtin_once() -> None:
    # The formats table's targets come first, in its order; targets registered in code (plugins,
    # tests) keep theirs after them.
    extra = dict(TARGETS)
    TARGETS.clear()
    for fmt in FORMATS.values():
        for spec in fmt.targets:
            if spec.hardware is not None and spec.hardware not in HARDWARE:
                raise ValueError(f"target {spec.name}: unknown hardware requirement {spec.hardware!r}")
            TARGETS[spec.name] = target_from_spec(fmt.name, spec)
            if spec.precheck:
                PRECHECKS.setdefault(spec.name, _lazy_build(fmt.exporter or "", spec.precheck, spec.name))
    for name, t in extra.items():
        TARGETS.setdefault(name, t)


def _load_builtin() -> None:
    _load_builtin_once()
