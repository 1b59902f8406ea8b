"""Which layers' INT8 weights cost the most at the logits: one layer at a time.

The FP32 ONNX graph of a run gets ONE layer's weights replaced by their INT8 per-channel
dequantized values (taken from edgederm's default ``onnx-int8`` QDQ model with ONNX Runtime's
``create_weight_matching``), everything else float; the logit SQNR against the FP32 graph and the
argmax flips on validation images say how much that layer's rounding costs once the network has
amplified it. Per-tensor weight SQNR cannot show this (issue 17: the EfficientNet-Lite0 student's
early layers measure >= 41 dB on their own but pull the logits down to 24-32 dB). Ranked worst
first, with the share of the summed noise power; the last line is the ``--opt exclude=...`` that
keeps the ``--top`` worst layers float in ``onnx-int8``. See docs/quantization.md.

    python bench/quant_debug.py runs/synthetic-demo --n 96 --top 6
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def sqnr_db(ref: np.ndarray, other: np.ndarray) -> float:
    return float(20 * np.log10(np.linalg.norm(ref) / max(float(np.linalg.norm(ref - other)), 1e-12)))


def run_onnx(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder (or a single-model checkpoint)")
    ap.add_argument("--n", type=int, default=96, help="validation images scored")
    ap.add_argument("--calib-images", type=int, default=200, help="calibration images (the onnx-int8 default)")
    ap.add_argument("--top", type=int, default=6, help="layers named in the suggested exclude list")
    args = ap.parse_args()

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.qdq_loss_debug import create_weight_matching

    from edgederm.export import ExportContext
    from edgederm.formats.onnx.export import _preprocessed, quantize_static_qdq, shape_subgraph

    ctx = ExportContext.from_path(args.run)
    try:
        pre = _preprocessed(ctx)
        base = onnx.load(str(pre))
        x = ctx.preprocess_records(ctx.split("val").records[: args.n])
        ref = run_onnx(pre, x)
        with tempfile.TemporaryDirectory(prefix="edgederm-quant-debug-") as tmp:
            qdq = Path(tmp) / "int8.onnx"
            quantize_static_qdq(pre, qdq, ctx.calibration_batches(args.calib_images, 8), nodes_to_exclude=shape_subgraph(base))
            matched = create_weight_matching(str(pre), str(qdq))
            rows = []
            for node in base.graph.node:
                if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in matched:
                    continue
                w = node.input[1]
                model = onnx.load(str(pre))
                for init in model.graph.initializer:
                    if init.name == w:
                        deq = np.asarray(matched[w]["dequantized"], np.float32).reshape(numpy_helper.to_array(init).shape)
                        init.CopyFrom(numpy_helper.from_array(deq, w))
                one = Path(tmp) / "one_layer.onnx"
                onnx.save(model, str(one))
                out = run_onnx(one, x)
                rows.append((node.name, sqnr_db(ref, out), float(((out - ref) ** 2).mean()),
                             int((out.argmax(1) != ref.argmax(1)).sum())))
    finally:
        ctx.close()
    total = sum(r[2] for r in rows) or 1e-30
    signal = float((ref**2).mean())
    print(f"{len(rows)} layers, {len(x)} validation images; weights INT8 one layer at a time, everything else FP32\n")
    print(f"| layer | logit SQNR dB | share of noise | argmax flips /{len(x)} |")
    print("|---|---:|---:|---:|")
    ranked = sorted(rows, key=lambda r: r[1])
    for name, db, power, flips in ranked:
        print(f"| {name} | {db:.1f} | {100 * power / total:.1f} % | {flips} |")
    top10 = sum(r[2] for r in ranked[:10]) / total
    print(f"\nsum of the single-layer noise powers: {10 * np.log10(signal / total):.1f} dB at the logits; "
          f"the 10 worst layers carry {100 * top10:.1f} %")
    print(f"keep the {args.top} worst float: --opt exclude={','.join(r[0] for r in ranked[: args.top])}")


if __name__ == "__main__":
    main()
