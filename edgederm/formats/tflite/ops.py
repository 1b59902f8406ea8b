"""What a TFLite flatbuffer computes in: its compute ops, how many run quantized, its weight dtypes.

Quantized means an integer kernel: ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` / ``FULLY_CONNECTED`` /
``TRANSPOSE_CONV`` / ``BATCH_MATMUL`` whose weight tensor (input 1) is 8-bit (or 4-bit); full
integer and dynamic-range (hybrid) kernels both qualify. FP16 weights reach the op through a
``DEQUANTIZE`` to float32 and compute in float, as do INT8 weights behind a ``DEQUANTIZE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..precision import OpCount

COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "CONV_3D")
_LOW = ("INT8", "UINT8", "INT4")
_STORAGE = {"FLOAT32": "fp32", "FLOAT16": "fp16", "INT8": "int8", "UINT8": "int8", "INT4": "int4", "INT16": "int16",
            "INT32": "int32", "INT64": "int64", "FLOAT64": "fp64"}


def count_ops(path: Path, info: Mapping[str, Any] | None = None) -> OpCount:
    """Op counts of the ``.tflite`` file at ``path`` (``info`` unused)."""
    from ai_edge_litert import schema_py_generated as schema

    op_name = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_name = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    compute = quantized = 0
    floating: list[str] = []
    weights: dict[str, int] = {}
    counted: set[int] = set()
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            oc = codes[op.OpcodeIndex()]
            name = op_name.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM")
            if name not in COMPUTE_OPS:
                continue
            compute += 1
            w = op.Inputs(1) if op.InputsLength() > 1 else -1
            if w >= 0 and type_name.get(sg.Tensors(w).Type()) in _LOW:
                quantized += 1
            else:
                floating.append(f"{name}#{i}")
        for t in range(sg.TensorsLength()):  # constant tensors: those with a non-empty buffer
            tensor = sg.Tensors(t)
            b = tensor.Buffer()
            if b <= 0 or b in counted:
                continue
            buffer = model.Buffers(b)
            size = buffer.DataLength() or (buffer.Size() if buffer.Offset() > 1 else 0)
            if size:
                counted.add(b)
                kind = _STORAGE.get(type_name.get(tensor.Type(), ""), "other")
                weights[kind] = weights.get(kind, 0) + int(size)
    return OpCount(compute_ops=compute, quantized_ops=quantized, weight_bytes=weights, float_op_names=floating)
