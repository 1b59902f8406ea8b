"""What an ONNX file computes in: its compute ops, how many run quantized, its weight dtypes.

Quantized means INT8 kernels in ONNX Runtime: an integer op (``QLinearConv``, ``ConvInteger``,
``MatMulInteger``, ...) or a QDQ-wrapped ``Conv`` / ``Gemm`` / ``MatMul`` / ``ConvTranspose``
whose weight is an 8-bit initializer behind a ``DequantizeLinear`` and whose activation comes
out of a ``DequantizeLinear`` (looking through layout ops such as ``Pad`` or ``Flatten``, which
pass an INT8 tensor through). A weight-only DQ on a float activation computes in float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..precision import OpCount

FLOAT_COMPUTE = ("Conv", "Gemm", "MatMul", "ConvTranspose")
INTEGER_COMPUTE = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul",
                   "MatMulIntegerToFloat")
#: Ops an INT8 tensor passes through unchanged in ORT's QDQ fusions.
_PASS_THROUGH = ("Pad", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool")
_8BIT = ("INT8", "UINT8", "INT4", "UINT4")
_STORAGE = {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16", "INT8": "int8", "UINT8": "int8", "INT4": "int4",
            "UINT4": "int4", "INT16": "int16", "UINT16": "int16", "INT32": "int32", "INT64": "int64", "DOUBLE": "fp64"}
_ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "fp64": 8}


def count_ops(path: Path, info: Mapping[str, Any] | None = None) -> OpCount:
    """Op counts of the ONNX file at ``path`` (``info`` unused: the graph says it all)."""
    import onnx

    return count_model(onnx.load(str(path), load_external_data=False))


def count_model(model: Any) -> OpCount:
    """Op counts of a loaded ``onnx.ModelProto``."""
    from onnx import TensorProto

    graph = model.graph
    dtype = {t.name: TensorProto.DataType.Name(t.data_type) for t in graph.initializer}
    for node in graph.node:  # constants written as nodes
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t is not None:
                    dtype[node.output[0]] = TensorProto.DataType.Name(a.t.data_type)
    producer = {o: n for n in graph.node for o in n.output}

    def dq_of_8bit_constant(tensor: str) -> bool:
        node = producer.get(tensor)
        return node is not None and node.op_type == "DequantizeLinear" and dtype.get(node.input[0]) in _8BIT

    def from_dq(tensor: str) -> bool:
        for _ in range(8):
            node = producer.get(tensor)
            if node is None:
                return False
            if node.op_type == "DequantizeLinear":
                return True
            if node.op_type not in _PASS_THROUGH or not node.input:
                return False
            tensor = node.input[0]
        return False

    compute = quantized = 0
    floating: list[str] = []
    for node in graph.node:
        if node.op_type in INTEGER_COMPUTE:
            compute += 1
            quantized += 1
        elif node.op_type in FLOAT_COMPUTE:
            compute += 1
            if len(node.input) > 1 and dq_of_8bit_constant(node.input[1]) and from_dq(node.input[0]):
                quantized += 1
            else:
                floating.append(node.name or node.op_type)
    weights: dict[str, int] = {}
    for t in graph.initializer:
        kind = _STORAGE.get(TensorProto.DataType.Name(t.data_type), "other")
        n = 1
        for d in t.dims:
            n *= int(d)
        size = n // 2 if kind == "int4" else n * _ITEMSIZE.get(kind, 1)
        weights[kind] = weights.get(kind, 0) + size
    return OpCount(compute_ops=compute, quantized_ops=quantized, weight_bytes=weights, float_op_names=floating)
