"""An artifact's precision, measured from the file: how many compute ops run quantized and in
what dtype the weights are stored.

A recipe's name says what a build *aimed* for; the file says what it holds. NNCF accuracy
control can revert every quantizer and still leave an "int8" recipe behind, and an ONNX Runtime
``nodes_to_exclude`` list can leave most layers float. So the export driver records the
precision this module derives, never the target's, and ``card validate`` checks the two agree.

Each format counts its own ops (``Format.ops``, e.g. ``edgederm.formats.onnx.ops:count_ops``,
imported lazily with the format's toolkit) and returns an :class:`OpCount`; :func:`derive` turns
that into ``int8`` (nearly every compute op quantized), ``mixed`` (some), or ``fp16`` / ``fp32``
by the weight storage when none are.

This module imports nothing from edgederm but ``formats.table`` and ``errors``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .table import format_for, load_attr

log = logging.getLogger(__name__)

#: Fraction of compute ops that must run quantized for ``int8``; below it (and above 0): ``mixed``.
#: 0.95 calls "first and last layer float" INT8 on a 50-conv network, and 10 float layers mixed.
INT8_MIN_FRACTION = 0.95
PRECISIONS = ("int8", "mixed", "fp16", "fp32")


@dataclass
class OpCount:
    """What an artifact's file holds: compute ops (conv / matmul / gemm / fully connected), how
    many of them run quantized, and weight (constant tensor) bytes per storage dtype."""

    compute_ops: int
    quantized_ops: int
    weight_bytes: dict[str, int] = field(default_factory=dict)  # "fp32" | "fp16" | "int8" | "int32" | ... -> bytes
    float_op_names: list[str] = field(default_factory=list)  # the compute ops left float (a few, for logs)

    def to_dict(self) -> dict[str, Any]:
        return derive(self)


def weight_storage(weight_bytes: Mapping[str, int]) -> str:
    """``fp16`` when more weight bytes are stored in FP16 than in FP32, else ``fp32``."""
    return "fp16" if weight_bytes.get("fp16", 0) > weight_bytes.get("fp32", 0) else "fp32"


def derive(count: OpCount) -> dict[str, Any]:
    """The card's record: ``precision`` plus the counts it was derived from."""
    total, q = int(count.compute_ops), int(count.quantized_ops)
    fraction = q / total if total else 0.0
    if q and fraction >= INT8_MIN_FRACTION:
        precision = "int8"
    elif q:
        precision = "mixed"
    else:
        precision = weight_storage(count.weight_bytes)
    return {
        "precision": precision,
        "compute_ops": total,
        "quantized_ops": q,
        "quantized_fraction": round(fraction, 4),
        "weight_bytes": {k: int(v) for k, v in sorted(count.weight_bytes.items()) if v},
    }


def measure(path: str | Path, info: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The measured precision record of the artifact at ``path`` (see :func:`derive`), or None
    when its format has no op counter (e.g. a TensorRT engine). ``info`` is the exporter's
    record, for formats whose file cannot be read op by op here (ExecuTorch's delegate blobs)."""
    fmt = format_for(path)
    if fmt.ops is None:
        return None
    counter: Callable[..., OpCount | None] = load_attr(fmt.ops)
    count = counter(Path(path), info=info)
    return None if count is None else derive(count)


def problems(recorded: Mapping[str, Any], measured: Mapping[str, Any]) -> list[str]:
    """Where a card's ``artifact`` record disagrees with the file (``card validate``)."""
    out = []
    for key in ("precision", "compute_ops", "quantized_ops"):
        if key in recorded and recorded.get(key) != measured.get(key):
            out.append(f"artifact.{key}: the card says {recorded.get(key)!r}, the file holds {measured.get(key)!r}")
    return out
