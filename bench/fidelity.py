"""Benchmark fidelity: does ``edgederm bench`` report the latency other tools report?

For one model, thread count and batch, three measurements of the steady-state p50 are compared:

* **edgederm**: ``edgederm bench --target local`` (a fresh ``python -m edgederm.bench.measure``
  process, ``edgederm.runtime.load``, the timed ``Predictor`` forward), for the OpenVINO IR and,
  when given an ONNX model, for ONNX Runtime too;
* **plain loop**: the bare runtime in a fresh process — compile/create the session with the same
  settings as edgederm's backend (OpenVINO: the batch reshaped to the static batch being timed,
  as edgederm's backend and ``benchmark_app -shape`` do, ``EXECUTION_MODE_HINT`` ``ACCURACY``),
  then ``perf_counter_ns`` around ``request.infer`` / ``session.run`` and nothing else; for
  OpenVINO also with the IR's dynamic batch (what edgederm compiled before it knew the batch);
* **benchmark_app** (OpenVINO's own tool, OpenVINO only): ``-hint none -nthreads N -nstreams 1
  -nireq 1 -api sync -infer_precision f32`` (FP32 like edgederm's backend, whose
  ``EXECUTION_MODE_HINT`` is ``ACCURACY``; without it a BF16-capable CPU runs the model in BF16).

The three run one after another in ``--rounds`` rounds (the order rotates each round) and the
median of each tool's per-round p50 is compared, so a slow spell of a shared machine falls on
all of them. The goal from the issue: edgederm within ±5 % of both, harness overhead
(edgederm vs plain loop) < 2 %. Printed as a Markdown table.

    python bench/fidelity.py --model model.onnx --threads 2 --batch 1 --runs 200 --rounds 3
    python bench/fidelity.py --model model.xml --threads 1
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edgederm.bench.measure import RESULT_MARKER, LocalJob  # noqa: E402

PLAIN = r"""
import json, sys, time, gc
import numpy as np
path, runtime, threads, batch, warmup, runs, static = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "1"
if runtime == "openvino":
    import openvino as ov
    core = ov.Core()
    model = core.read_model(path)
    ps = model.input(0).get_partial_shape()
    dims = [batch] + [d.get_length() for d in list(ps)[1:]]
    if static:  # as benchmark_app -shape and edgederm's backend (given the batch) do
        model.reshape({model.input(0).get_any_name(): dims})
    compiled = core.compile_model(model, "CPU", {"EXECUTION_MODE_HINT": "ACCURACY", "INFERENCE_NUM_THREADS": threads})
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    req.set_input_tensor(ov.Tensor(x))
    call = req.infer
else:
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dims = [batch] + list(inp.shape[1:])
    feed = {inp.name: np.random.default_rng(0).standard_normal(dims).astype(np.float32)}
    call = lambda: sess.run(None, feed)
for _ in range(warmup + 1):
    call()
gc.disable()
t = []
for _ in range(runs):
    t0 = time.perf_counter_ns(); call(); t.append((time.perf_counter_ns() - t0) / 1e6)
print(json.dumps({"p50": float(np.percentile(t, 50)), "mean": float(np.mean(t)), "n": len(t)}))
"""


def edgederm_p50(path: Path, backend: str, threads: int, batch: int, warmup: int, runs: int) -> float:
    job = LocalJob(artifact=str(path), backend=backend, threads=threads, batch=batch, warmup=warmup, runs=runs, e2e_runs=0)
    proc = subprocess.run([sys.executable, "-m", "edgederm.bench.measure", "--job", job.to_json()], capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER))
    return float(json.loads(line[len(RESULT_MARKER):])["latency_ms"]["p50"])


def plain_p50(path: Path, runtime: str, threads: int, batch: int, warmup: int, runs: int, static: bool = False) -> float:
    out = subprocess.run([sys.executable, "-c", PLAIN, str(path), runtime, str(threads), str(batch), str(warmup), str(runs),
                          "1" if static else "0"],
                         capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["p50"])


def benchmark_app_p50(xml: Path, threads: int, batch: int, runs: int, shape: list[int]) -> float:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    args = [exe, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nthreads", str(threads), "-nstreams", "1", "-nireq", "1",
            "-api", "sync", "-niter", str(runs), "-infer_precision", "f32", "-shape", "[" + ",".join(map(str, [batch, *shape[1:]])) + "]"]
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    m = re.search(r"Median:\s+([\d.]+) (ms|us)", text)
    if not m:
        raise SystemExit(f"benchmark_app printed no median:\n{text[-2000:]}")
    return float(m.group(1)) / (1000.0 if m.group(2) == "us" else 1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help=".onnx (also converted to an IR for OpenVINO) or .xml (with its card)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import openvino as ov

    from edgederm.card import load_card
    from edgederm.runtime.registry import BACKENDS

    tmp = Path(tempfile.mkdtemp(prefix="edgederm-fidelity-"))
    try:
        models: dict[str, Path] = {}
        if args.model.suffix == ".onnx":
            models["onnx"] = args.model
            xml = tmp / "model.xml"
            ov.save_model(ov.convert_model(str(args.model)), str(xml), compress_to_fp16=False)
            BACKENDS["openvino"].embed_card(xml, load_card(args.model))
            models["openvino"] = xml
        else:
            models["openvino"] = args.model
        shape = [int(d) for d in load_card(models["openvino"]).preprocessing.input_size]
        shape = [args.batch, 3, *shape]
        p50: dict[str, list[float]] = {}
        tools = [("edgederm", "openvino"), ("plain", "openvino"), ("plain-dynamic", "openvino"), ("benchmark_app", "openvino")]
        if "onnx" in models:
            tools += [("edgederm", "onnx"), ("plain", "onnx")]
        for r in range(args.rounds):
            order = tools[r % len(tools):] + tools[: r % len(tools)]
            for tool, rt in order:
                path = models[rt]
                if tool == "edgederm":
                    v = edgederm_p50(path, rt, args.threads, args.batch, args.warmup, args.runs)
                elif tool.startswith("plain"):
                    v = plain_p50(path, "openvino" if rt == "openvino" else "onnxruntime", args.threads, args.batch, args.warmup,
                                  args.runs, static=not (rt == "openvino" and tool == "plain-dynamic"))
                else:
                    v = benchmark_app_p50(path, args.threads, args.batch, args.runs, shape)
                p50.setdefault(f"{tool}/{rt}", []).append(v)
                print(f"round {r + 1}: {tool:13s} {rt:8s} p50 {v:.4f} ms", file=sys.stderr, flush=True)
        med = {k: statistics.median(v) for k, v in p50.items()}
        print(f"\nModel {args.model.name}, input {shape}, {args.threads} thread(s), {args.runs} timed runs after "
              f"{args.warmup} warm-up, {args.rounds} rounds (median of the per-round p50s).\n")
        print("| runtime | tool | p50 per round (ms) | median p50 (ms) | vs plain loop | vs benchmark_app |")
        print("|---|---|---|---:|---:|---:|")
        names = {"edgederm": "edgederm bench", "plain": "plain loop (same compiled model as edgederm)",
                 "plain-dynamic": "plain loop, the IR's dynamic batch", "benchmark_app": "benchmark_app"}
        for key, vals in p50.items():
            tool, rt = key.split("/")
            plain, ba = med.get(f"plain/{rt}"), med.get("benchmark_app/openvino") if rt == "openvino" else None

            def rel(ref: float | None, same: bool) -> str:
                return "—" if ref is None or same else f"{100 * (med[key] / ref - 1):+.1f} %"

            print(f"| {'OpenVINO' if rt == 'openvino' else 'ONNX Runtime'} | {names[tool]} | {', '.join(f'{v:.3f}' for v in vals)} | "
                  f"{med[key]:.3f} | {rel(plain, tool == 'plain')} | {rel(ba, tool == 'benchmark_app')} |")
        for rt in ("openvino", "onnx"):
            if f"edgederm/{rt}" in med:
                over = 100 * (med[f"edgederm/{rt}"] / med[f"plain/{rt}"] - 1)
                print(f"\nharness overhead ({rt}): edgederm vs the plain loop on the same compiled model {over:+.2f} % (goal < 2 %)")
        if "benchmark_app/openvino" in med:
            d = 100 * (med["edgederm/openvino"] / med["benchmark_app/openvino"] - 1)
            d2 = 100 * (med["plain-dynamic/openvino"] / med["benchmark_app/openvino"] - 1)
            print(f"edgederm vs benchmark_app (OpenVINO): {d:+.2f} % (goal within ±5 %); "
                  f"a plain loop on the IR's dynamic batch vs benchmark_app: {d2:+.2f} %")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
