"""The export stage: a target registry, one driver, and the accuracy gate.

``edgederm export RUN --target onnx-int8`` (``export_run``) turns a single-model checkpoint (a
distilled student, or a one-member run) into deployable artifacts — ONNX, OpenVINO, TFLite,
TensorRT — each with the card embedded and as a sidecar, and keeps an artifact only if the gate
(``edgederm.export.gate``) finds it within tolerance of the FP32 reference on the validation
split. ``TARGETS`` (``edgederm.export.registry``) lists what can be made.
"""

from __future__ import annotations

from .registry import (
    PRECHECKS,
    TARGETS,
    MissingHardwareError,
    Option,
    Recipe,
    Target,
    _load_builtin,
    get_target,
    list_targets,
    register_target,
    resolve_targets,
    targets_table,
)

_load_builtin()

from .context import ExportContext, load_split_index, resolve_checkpoint  # noqa: E402
from .gate import GateResult, Tolerances, compare, run_gate  # noqa: E402
from .run import export_run  # noqa: E402

__all__ = [
    "PRECHECKS",
    "TARGETS",
    "ExportContext",
    "GateResult",
    "MissingHardwareError",
    "Option",
    "Recipe",
    "Target",
    "Tolerances",
    "compare",
    "export_run",
    "get_target",
    "list_targets",
    "load_split_index",
    "register_target",
    "resolve_checkpoint",
    "resolve_targets",
    "run_gate",
    "targets_table",
]
