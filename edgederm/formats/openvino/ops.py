"""What an OpenVINO IR computes in: its compute ops, how many run quantized, its weight dtypes.

Quantized means what the CPU plugin's low-precision transformations run in INT8: a
``Convolution`` / ``GroupConvolution`` / ``ConvolutionBackpropData`` / ``MatMul`` whose activation
comes out of a ``FakeQuantize`` (looking through ops an INT8 tensor passes, such as ``MaxPool``
or ``Reshape``) and whose weight is an 8-bit (or 4-bit) constant behind ``Convert`` / scale
ops, or a ``FakeQuantize``d constant (an NNCF model before it is saved). A layer whose
quantizers NNCF reverted has neither and counts as float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..precision import OpCount

COMPUTE_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
#: Ops NNCF looks through when placing a quantizer (an INT8 tensor stays INT8 through them).
AGNOSTIC_OPS = ("MaxPool", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "StridedSlice", "Pad",
                "Split", "VariadicSplit", "ReduceMax", "Concat", "DepthToSpace", "SpaceToDepth")
#: Ops between a compressed weight constant and the op that consumes it.
_WEIGHT_PATH = ("Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze")
_LOW = {"i8": "int8", "u8": "int8", "i4": "int4", "u4": "int4"}
_STORAGE = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i32": "int32", "i64": "int64", "f64": "fp64", **_LOW}


def _activation_quantized(op: Any) -> bool:
    src = op.input_value(0).get_node()
    for _ in range(16):
        if src.get_type_name() not in AGNOSTIC_OPS or src.get_input_size() == 0:
            break
        src = src.input_value(0).get_node()
    return bool(src.get_type_name() == "FakeQuantize")


def _weight_quantized(op: Any) -> bool:
    stack, seen = [op.input_value(1).get_node()], 0
    while stack and seen < 32:
        node = stack.pop()
        seen += 1
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            if node.get_element_type().get_type_name() in _LOW:
                return True
            continue
        if kind in _WEIGHT_PATH:
            stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return False


def classify(ov_model: Any) -> tuple[list[str], list[str]]:
    """(quantized, float) friendly names of the compute ops of an ``ov.Model``."""
    quantized, floating = [], []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in COMPUTE_OPS:
            continue
        ok = _activation_quantized(op) and _weight_quantized(op)
        (quantized if ok else floating).append(op.get_friendly_name())
    return quantized, floating


def count_model(ov_model: Any) -> OpCount:
    """Op counts of an ``ov.Model`` (in memory or read from an IR)."""
    quantized, floating = classify(ov_model)
    weights: dict[str, int] = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        et = op.get_element_type()
        n = 1
        for d in op.get_output_shape(0):
            n *= int(d)
        kind = _STORAGE.get(et.get_type_name(), "other")
        weights[kind] = weights.get(kind, 0) + (n * et.bitwidth + 7) // 8
    return OpCount(compute_ops=len(quantized) + len(floating), quantized_ops=len(quantized), weight_bytes=weights,
                   float_op_names=floating)


def count_ops(path: Path, info: Mapping[str, Any] | None = None) -> OpCount:
    """Op counts of the IR at ``path`` (the ``.xml``; its ``.bin`` beside it)."""
    import openvino as ov

    return count_model(ov.Core().read_model(str(path)))
