"""ExecuTorch export: ``torch.export`` → edge dialect lowered to the XNNPACK delegate → ``.pte``.

- ``executorch`` (FP32): ``to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])``.
- ``executorch-int8``: PT2E static quantization with ExecuTorch's ``XNNPACKQuantizer`` (symmetric,
  per-channel INT8 weights, INT8 activations; torchao's ``prepare_pt2e``/``convert_pt2e``),
  calibrated on class-balanced train-split images preprocessed as the card says, then the same
  lowering. The returned info counts the convolutions/linears that run quantized inside the
  XNNPACK blobs, read from the lowered program.

The card goes in as the constant method ``edgederm_card`` (see ``metadata.py``). The program is
exported at batch 1: in ExecuTorch 1.5 a dynamic batch plans the input buffer for a bound derived
from the example, not the declared maximum, and fails for smaller batches on an EfficientNet.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ...errors import EdgedermError, MissingExtraError
from ...fsutil import atomic_path
from ...provenance import package_version
from .metadata import CARD_METHOD

if TYPE_CHECKING:
    from ...export.context import ExportContext

log = logging.getLogger(__name__)

_Q_OPS = ("quantize_per_tensor", "quantize_per_channel")
_DQ_OPS = ("dequantize_per_tensor", "dequantize_per_channel")
_COMPUTE_OPS = ("conv2d", "convolution", "linear", "addmm", "mm", "matmul")


def _quant_stats(gm: Any) -> Counter:
    """Q/DQ nodes, and conv/linear nodes whose inputs all come out of a dequantize (= INT8)."""
    out: Counter = Counter()
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        name = str(n.target)
        if any(k in name for k in _DQ_OPS):  # before _Q_OPS: 'dequantize_x' contains 'quantize_x'
            out["dequantize_nodes"] += 1
        elif any(k in name for k in _Q_OPS):
            out["quantize_nodes"] += 1
        elif any(f".{k}." in f".{name}" for k in _COMPUTE_OPS):
            ins = [a for a in n.args[:2] if hasattr(a, "target")]
            quantized = bool(ins) and all(any(k in str(a.target) for k in _DQ_OPS) for a in ins)
            out["int8_conv_linear" if quantized else "float_conv_linear"] += 1
    return out


def export_executorch(
    model: Any,
    example: Any,
    out: Path,
    *,
    card_json: str,
    quantize: bool = False,
    calibration: Iterable[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write ``model`` as an XNNPACK-delegated ``.pte`` at ``out`` (atomically); what it did."""
    import torch

    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise MissingExtraError("executorch", "executorch", "ExecuTorch export") from None

    ex = example[:1].detach().float().contiguous()
    info: dict[str, Any] = {"executorch": package_version("executorch"), "torch": torch.__version__,
                            "delegate": "XNNPACK", "batch": 1}
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and export deprecation chatter
        if quantize:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(torch.export.export(model, (ex,)).module(), quantizer)
            n = 0
            for batch in calibration or []:
                b = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
                for i in range(b.shape[0]):  # the captured graph is batch 1
                    prepared(b[i : i + 1])
                n += int(b.shape[0])
            if n == 0:
                raise EdgedermError("executorch-int8: no calibration images (the run's train split is empty here)")
            model = convert_pt2e(prepared)
            info.update(quantizer="XNNPACKQuantizer symmetric, per-channel weights (PT2E)", calib_images=n,
                        torchao=package_version("torchao"))
        edge = to_edge_transform_and_lower(
            torch.export.export(model, (ex,)), partitioner=[XnnpackPartitioner()],
            constant_methods={CARD_METHOD: card_json},
        )
        gm = edge.exported_program().graph_module
        inside: Counter = Counter()
        partitions = 0
        for node in gm.graph.nodes:
            if node.op == "get_attr" and node.name.startswith("lowered_module_"):
                partitions += 1
                inside.update(_quant_stats(getattr(gm, node.name).original_module.graph_module))
        outside = _quant_stats(gm)
        program = edge.to_executorch()
    plan = next(p for p in program.executorch_program.execution_plan if p.name == "forward")
    info.update(
        partitions=partitions,
        int8_conv_linear=int(inside["int8_conv_linear"] + outside["int8_conv_linear"]),
        float_conv_linear=int(inside["float_conv_linear"] + outside["float_conv_linear"]),
        ops_outside_delegate=sorted(o.name for o in plan.operators),
    )
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(program.buffer)
    log.info("executorch%s: %d partition(s), %d INT8 / %d float conv+linear", "-int8" if quantize else "",
             partitions, info["int8_conv_linear"], info["float_conv_linear"])
    return info


# -- targets (their rows: edgederm.formats.table) ---------------------------------------------------
def build_executorch(ctx: "ExportContext", out: Path) -> dict[str, Any]:
    return export_executorch(ctx.model, ctx.example(), out, card_json=ctx.card.to_json())


def build_executorch_int8(ctx: "ExportContext", out: Path, *, calib_images: int) -> dict[str, Any]:
    return export_executorch(ctx.model, ctx.example(), out, card_json=ctx.card.to_json(), quantize=True,
                             calibration=ctx.calibration_batches(calib_images, 8))
