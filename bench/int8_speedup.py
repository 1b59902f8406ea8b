"""INT8 vs FP32, side by side in one process on this CPU (issue 17): is INT8 faster, and by how much?

1. The run's student: every FP32 and INT8 target this machine builds (ONNX Runtime, OpenVINO, LiteRT,
   ExecuTorch), exported by ``export_run`` WITHOUT the gate (speed only: whether an INT8 file keeps
   the clinical numbers is the gate's job), opened through ``edgederm.runtime.load`` and timed on
   the same preprocessed image. The precision printed is the one measured from each file.
2. A ResNet-50 (random weights: speed does not depend on them) through the same exporters' INT8
   paths (ORT static QDQ, NNCF PTQ), against PyTorch eager FP32.

Timing: batch 1, ``--threads`` threads, rounds interleaved across all artifacts (A B C A B C ...) so
that a noisy neighbour slows every artifact alike; p50 over all rounds. The ISA the runtimes can
use (VNNI / AMX) is printed from the CPU flags.

    python bench/int8_speedup.py RUN [--threads 2] [--rounds 20] [--per-round 10] [--no-resnet]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

FP32_INT8 = [("onnx", "onnx-int8"), ("openvino", "openvino-int8"), ("tflite", "tflite-int8"), ("executorch", "executorch-int8")]


def interleaved_p50(fns: dict[str, Callable[[], Any]], rounds: int, per_round: int) -> dict[str, float]:
    """Median milliseconds per call of each function, timed in interleaved rounds."""
    for fn in fns.values():  # warm-up
        for _ in range(5):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def student(run: Path, work: Path, threads: int, rounds: int, per_round: int) -> None:
    from edgederm.card import load_card
    from edgederm.export.registry import get_target
    from edgederm.export.run import export_run
    from edgederm.runtime import load

    names = [n for pair in FP32_INT8 for n in pair if get_target(n).available()]
    results = export_run(run, names, out_dir=work / "student", gate=False)
    paths = {r["target"]: Path(r["path"]) for r in results if r.get("path") and Path(r["path"]).exists()}
    ref = load(next(iter(paths.values())))
    spec = ref.card.preprocessing
    x = np.random.default_rng(0).standard_normal((1, 3, spec.height, spec.width)).astype(np.float32)
    from edgederm.runtime.registry import backend_for

    # As `edgederm bench` does: a runtime that compiles for a known batch (OpenVINO) gets batch 1.
    preds = {n: load(p, threads=threads, **({"batch": 1} if backend_for(p).batch_option else {})) for n, p in paths.items()}
    p50 = interleaved_p50({n: (lambda p=p: p.forward(x)) for n, p in preds.items()}, rounds, per_round)
    print(f"\nstudent ({run}), batch 1, {threads} threads, p50 over {rounds}x{per_round} interleaved runs")
    print("| runtime | FP32 p50 (ms) | INT8 p50 (ms) | speed-up | INT8 file: measured precision, quantized ops | size FP32 → INT8 |")
    print("|---|---:|---:|---:|---|---|")
    for fp32, int8 in FP32_INT8:
        if fp32 not in p50 or int8 not in p50:
            continue
        art = load_card(paths[int8]).artifact
        ops = f"{art.get('precision')}, {art.get('quantized_ops')}/{art.get('compute_ops')}"
        size = f"{paths[fp32].stat().st_size / 1e6:.1f} → {paths[int8].stat().st_size / 1e6:.1f} MB"
        if fp32 == "openvino":  # weights live in the .bin
            size = f"{paths[fp32].with_suffix('.bin').stat().st_size / 1e6:.1f} → {paths[int8].with_suffix('.bin').stat().st_size / 1e6:.1f} MB"
        print(f"| {preds[fp32].format} | {p50[fp32]:.2f} | {p50[int8]:.2f} | {p50[fp32] / p50[int8]:.2f}x | {ops} | {size} |")


def resnet50(work: Path, threads: int, rounds: int, per_round: int) -> None:
    import onnxruntime as ort
    import openvino as ov
    import torch
    import torchvision
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgederm.formats.onnx.export import quantize_static_qdq
    from edgederm.formats.openvino.export import quantize_openvino

    torch.set_num_threads(threads)
    model = torchvision.models.resnet50(num_classes=7).eval()
    x = torch.randn(1, 3, 224, 224)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(32)]
    onnx_fp32, pre, onnx_int8 = work / "r50.onnx", work / "r50-pre.onnx", work / "r50-int8.onnx"
    torch.onnx.export(model, (x,), str(onnx_fp32), input_names=["input"], output_names=["logits"], opset_version=17, dynamo=False)
    quant_pre_process(str(onnx_fp32), str(pre))
    quantize_static_qdq(pre, onnx_int8, calib)
    quantize_openvino(model, x, calib, work / "r50-int8.xml", onnx_path=onnx_fp32, subset_size=32)

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    xs = x.numpy()
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in
                {"ort-fp32": onnx_fp32, "ort-int8": onnx_int8}.items()}
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads, "EXECUTION_MODE_HINT": "ACCURACY"}
    ov_int8 = core.compile_model(core.read_model(str(work / "r50-int8.xml")), "CPU", cfg).create_infer_request()
    ov_fp32 = core.compile_model(ov.convert_model(str(onnx_fp32)), "CPU", cfg).create_infer_request()

    def eager() -> None:
        with torch.inference_mode():
            model(x)

    fns = {"pytorch-eager-fp32": eager, **{k: (lambda s=s: s.run(None, {"input": xs})) for k, s in sessions.items()},
           "openvino-fp32": lambda: ov_fp32.infer({0: xs}), "openvino-int8": lambda: ov_int8.infer({0: xs})}
    p50 = interleaved_p50(fns, rounds, per_round)
    base = p50["pytorch-eager-fp32"]
    print(f"\nResNet-50 (random weights, 224 px), batch 1, {threads} threads")
    print("| runtime | p50 (ms) | vs PyTorch eager FP32 |")
    print("|---|---:|---:|")
    for k, v in sorted(p50.items(), key=lambda kv: kv[1]):
        print(f"| {k} | {v:.2f} | {base / v:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with a single-model checkpoint (e.g. runs/synthetic-demo/distill-efficientnet_lite0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--no-resnet", action="store_true")
    args = ap.parse_args()

    from edgederm.bench.env import isa_summary, local_environment

    env = local_environment(args.threads)
    print(f"CPU: {env.get('cpu', {}).get('model')}; ISA: {isa_summary(env.get('cpu', {}).get('isa'))}")
    work = Path(tempfile.mkdtemp(prefix="int8-speedup-", dir=Path.cwd()))
    try:
        student(args.run, work, args.threads, args.rounds, args.per_round)
        if not args.no_resnet:
            resnet50(work, args.threads, args.rounds, args.per_round)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
