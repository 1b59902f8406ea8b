"""Local measurements: one (artifact, runtime, threads, batch) in a fresh process, and FLOP counts.

``measure_local`` runs in a child process that the local target starts for every configuration
(``python -m edgederm.bench.measure --job JSON``), so that load/compile time is a cold start and
the peak RSS belongs to that one model. In the child:

* ``import_ms``: importing the runtime and what reads the card (onnxruntime + onnx, openvino,
  ai_edge_litert, torch + the model registry);
* ``load_ms``: ``edgederm.runtime.load`` (reading the card, building the session / compiling);
* ``first_inference_ms``, then ``warmup`` untimed runs, then the timed runs of the model call
  (``Predictor.heads()[i].forward`` on a batch preprocessed once with the card's spec — for an
  ensemble checkpoint every member runs, as one inference of the ensemble does);
* ``e2e_ms`` (batch 1 only): image file → decision, i.e. ``Predictor.predict([jpeg])``: JPEG
  decode, the card's preprocessing and TTA views, inference, softmax/ensemble, decision rule;
  ``decode_ms``: the JPEG decode alone (``Predictor.load_image``, as the runtime calls it);
* ``peak_rss_bytes``: the child's peak resident set (VmHWM) at the end.

FLOPs are counted in the parent, once per model: ``torch.utils.flop_counter.FlopCounterMode`` on
the PyTorch model (the checkpoint itself, or the source checkpoint an exported artifact's card
names), else from the ONNX graph (2 x MACs of Conv/ConvTranspose/Gemm/MatMul with inferred shapes).
Both count multiply-accumulates of the matrix/convolution ops as 2 FLOP and ignore element-wise
ops, so they agree on the same network.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgedermError
from .runner import current_rss_bytes, peak_rss_bytes, summarize, timed_runs

log = logging.getLogger(__name__)

RESULT_MARKER = "EDGEDERM_BENCH_RESULT "


@dataclass
class LocalJob:
    """One local configuration, passed to the child process as JSON."""

    artifact: str
    backend: str
    threads: int | None = None
    batch: int = 1
    warmup: int = 10
    runs: int = 50
    min_time_s: float = 0.0
    max_time_s: float | None = None
    e2e_runs: int = 20  # 0: skip the end-to-end measurement
    image: str | None = None  # JPEG for the end-to-end measurement
    fma_units: int = 2
    options: dict[str, Any] = field(default_factory=dict)  # extra runtime.load options

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "LocalJob":
        return cls(**json.loads(text))


def synthetic_jpeg(path: str | Path, size: tuple[int, int] = (600, 450), seed: int = 0) -> Path:
    """A dermoscopy-sized JPEG (HAM10000 images are 600 x 450): a smooth skin-coloured field with a
    darker lesion, so JPEG decode and resize cost what a real image costs."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    w, h = size
    low = rng.integers(150, 230, (6, 8, 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    draw.ellipse((w * 0.3, h * 0.25, w * 0.7, h * 0.75), fill=(110, 70, 50))
    img = img.filter(ImageFilter.GaussianBlur(3))
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (h, w, 3))
    path = Path(path)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def _import_runtime(backend: str) -> float:
    """Import what the backend needs first (its runtime, its card reader, the model registry for
    checkpoints: the row's ``preload`` in the formats table), timed as ``import_ms``, so that
    ``load_ms`` is the artifact's own cold start, comparable between runtimes. Milliseconds."""
    from ..formats.table import FORMATS

    fmt = FORMATS.get(backend)
    modules = (fmt.preload or ((fmt.module,) if fmt.module else ())) if fmt is not None else ()
    t0 = time.perf_counter()
    for m in modules:
        importlib.import_module(m)
    return (time.perf_counter() - t0) * 1e3



def measure_local(job: LocalJob) -> dict[str, Any]:
    """Measure one configuration in this process (meant to be a fresh one)."""
    from ..runtime import load
    from .env import local_environment

    rss_start = current_rss_bytes()
    import_ms = _import_runtime(job.backend)
    options = dict(job.options)
    if job.threads:
        options["threads"] = int(job.threads)
    from ..runtime.registry import backend_for

    if backend_for(job.artifact, job.backend).batch_option:
        options.setdefault("batch", job.batch)  # time the model compiled for the batch being timed
    t0 = time.perf_counter()
    pred = load(job.artifact, backend=job.backend, **options)
    load_ms = (time.perf_counter() - t0) * 1e3
    rss_loaded = current_rss_bytes()

    heads = pred.heads()
    image = pred.load_image(job.image) if job.image else None
    if image is None:
        from PIL import Image

        image = Image.fromarray(np.full((450, 600, 3), 128, np.uint8))
    inputs = [np.repeat(h.spec.apply(image)[None], job.batch, axis=0) for h in heads]

    def infer() -> None:
        for h, x in zip(heads, inputs):
            h.forward(x)

    first_ms, samples = timed_runs(infer, warmup=job.warmup, runs=job.runs, min_time_s=job.min_time_s,
                                   max_time_s=job.max_time_s)
    stats = summarize(samples)
    out: dict[str, Any] = {
        "tool": "edgederm",
        "import_ms": import_ms,
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "latency_ms": stats,
        "samples_ms": [round(s, 4) for s in samples[:5000]],
        "throughput_ips": job.batch * 1000.0 / stats["mean"],
        "input_shape": [list(x.shape) for x in inputs] if len(inputs) > 1 else list(inputs[0].shape),
        "input_dtype": str(inputs[0].dtype),
        "members": len(heads),
    }
    if job.e2e_runs > 0 and job.batch == 1 and job.image:
        views = pred.views(None)
        first_e2e, e2e = timed_runs(lambda: pred.predict([job.image]), warmup=1, runs=job.e2e_runs)
        _, dec = timed_runs(lambda: pred.load_image(job.image), warmup=1, runs=job.e2e_runs)
        out["e2e_ms"] = summarize(e2e)
        out["e2e"] = {"image": Path(job.image).name, "views": len(views), "members": len(heads),
                      "first_ms": first_e2e, "decode_ms": summarize(dec),
                      "what": "Predictor.predict([jpeg]): decode + card preprocessing x TTA views + inference + decision"}
    out["rss_before_load_bytes"] = rss_start
    out["rss_after_load_bytes"] = rss_loaded
    out["peak_rss_bytes"] = peak_rss_bytes()
    out["env"] = local_environment(job.threads, fma_units=job.fma_units)
    return out


# -- FLOPs ---------------------------------------------------------------------------------------
def count_flops(path: str | Path, card: Any | None = None) -> dict[str, Any] | None:
    """FLOPs of one inference of one image (batch 1), with the method used; None if not countable.

    Order: the PyTorch model (the ``.pt`` itself, or the card's source checkpoint when it still
    exists) through ``FlopCounterMode``; else the ONNX graph of an ``.onnx`` artifact.
    """
    p = Path(path)
    source = None
    from ..formats.table import find_format

    fmt = find_format(p)
    if fmt is not None and fmt.name == "torch":
        source = p
    elif card is not None:
        ck = ((card.artifact or {}).get("source") or {}).get("checkpoint")
        if ck and Path(ck).exists():
            source = Path(ck)
    if source is not None:
        try:
            return _torch_flops(source, card if source != p else None)
        except Exception as e:  # a checkpoint that cannot be rebuilt here: fall back to the graph
            log.info("FLOP count from %s failed (%s); trying the artifact's graph", source, e)
    if fmt is not None and fmt.name == "onnx":
        try:
            return onnx_flops(p)
        except Exception as e:
            log.info("FLOP count of %s failed: %s", p, e)
    return None


def _torch_flops(checkpoint: Path, artifact_card: Any | None) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..checkpoint import load_checkpoint
    from ..preprocess import PreprocessSpec

    members, card = load_checkpoint(checkpoint)
    meta = card.model.get("members") or []
    if artifact_card is not None and len(members) != 1:
        raise ValueError("the source is an ensemble; the artifact is one model")
    total = 0
    for i, m in enumerate(members):
        info = meta[i] if i < len(meta) else {}
        spec = PreprocessSpec.from_dict(info["preprocessing"]) if "preprocessing" in info else card.preprocessing
        if artifact_card is not None:
            spec = artifact_card.preprocessing
        model = m.build()
        x = torch.zeros(1, 3, spec.height, spec.width)
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            model(x)
        total += int(fc.get_total_flops())
    what = "the checkpoint" if artifact_card is None else f"its source checkpoint {checkpoint.name}"
    return {"per_image": total, "method": f"torch.utils.flop_counter.FlopCounterMode on {what} (conv/matmul MACs x 2)",
            "members": len(members)}


def onnx_flops(path: str | Path) -> dict[str, Any]:
    """2 x MACs of Conv, ConvTranspose, Gemm and MatMul nodes, shapes inferred at batch 1."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: list(i.dims) for i in graph.initializer}
    for inp in graph.input:
        if inp.name in inits:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1  # batch (and any other symbolic dim) fixed to 1
            break
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = dict(inits)
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes.setdefault(vi.name, dims)
    # Constant-node weights (and QDQ weight chains: DequantizeLinear keeps the weight's shape).
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(numpy_helper.to_array(a.t).shape)
        elif node.op_type in ("DequantizeLinear", "Cast", "Identity") and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])

    def prod(xs: list[int]) -> int:
        out = 1
        for x in xs:
            out *= int(x)
        return out

    macs = 0
    unknown = 0
    for node in model.graph.node:
        op = node.op_type
        out = shapes.get(node.output[0]) if node.output else None
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and (not out or 0 in out):
            unknown += 1
            continue
        if op == "Conv":
            w = shapes.get(node.input[1])
            if not w:
                unknown += 1
                continue
            macs += prod(out) * prod(w[1:])  # per output element: Cin/groups x kernel
        elif op == "ConvTranspose":
            w, x = shapes.get(node.input[1]), shapes.get(node.input[0])
            if not w or not x:
                unknown += 1
                continue
            macs += prod(x) * prod(w[1:])  # per input element: Cout/groups x kernel
        elif op in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0])
            if not a:
                unknown += 1
                continue
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if (op == "Gemm" and trans_a) else a[-1]
            macs += prod(out) * int(k)
    doc: dict[str, Any] = {"per_image": 2 * macs, "method": "ONNX graph: 2 x MACs of Conv/ConvTranspose/Gemm/MatMul (shapes inferred at batch 1)"}
    if unknown:
        doc["uncounted_nodes"] = unknown
    return doc


# -- child process entry point --------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="edgederm bench: measure one local configuration (internal)")
    p.add_argument("--job", required=True, help="LocalJob as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = measure_local(LocalJob.from_json(args.job))
    except EdgedermError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except Exception as e:  # a runtime that rejects the model: one line for the results store
        log.debug("measurement failed", exc_info=True)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        sys.stderr.write(f"error: {type(e).__name__}: {first}\n")
        return 1
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
