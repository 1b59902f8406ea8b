"""Training throughput of every registered classifier: images/s for forward + backward + AdamW step.

Each model is built through the registry (``edgederm.models.create_model``, random init, so no
weights are fetched), put in train mode, and fed a fixed random batch at its native input size with
random labels: this measures the model's compute, not data loading or augmentation. The first
``--warmup`` steps (allocator, oneDNN/cuDNN kernel selection) are excluded; each of the next
``--steps`` steps is timed on its own (with a device synchronisation on CUDA) and the median is
reported, so one step slowed down by another process on a shared machine does not move the result.
With ``--repeats R`` the whole model list is run R times in turn (each model rebuilt with the same
seed) and the median is taken over all R x steps timings: a slow spell of a shared machine then
falls on several models a little instead of on one model entirely.

Models that cannot be built, or whose output is not ``(batch, num_classes)`` logits (e.g. a
segmentation family), are skipped with the reason printed.

    python bench/train_throughput.py                              # all models, batch 8, CPU
    python bench/train_throughput.py --models efficientnet_lite0,resnet50 --batch 32 --steps 20
    python bench/train_throughput.py --device cuda --amp bf16 --channels-last --batch 64 --json out.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edgederm.models import create_model, get_model_spec, list_models  # noqa: E402

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="all", help="comma-separated registry names, or 'all' (default)")
    ap.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps; the median is reported (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the model list, interleaved (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--amp", choices=sorted(AMP_DTYPES), default="off", help="autocast dtype (fp16 uses a GradScaler; CUDA only)")
    ap.add_argument("--channels-last", action="store_true", help="model and input in channels_last memory format")
    ap.add_argument("--num-classes", type=int, default=7, help="classifier outputs (default 7, HAM10000)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results and environment here")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        ap.error("--batch, --steps and --repeats must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if args.amp == "fp16" and args.device != "cuda":
        ap.error("--amp fp16 needs --device cuda (CPU autocast supports bf16)")
    return args


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import timm

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One model's row, or ``{"name", "skipped": reason}``."""
    spec = get_model_spec(name)
    size = spec.input_size
    row: dict[str, Any] = {"model": name, "family": spec.family, "input_size": size, "batch": args.batch}
    torch.manual_seed(args.seed)
    try:
        model = create_model(name, args.num_classes, pretrained=False)
    except Exception as e:  # noqa: BLE001 - any build failure is reported, not fatal
        return {**row, "skipped": f"build failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    model = model.to(device).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    x = torch.randn(args.batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (args.batch,), device=device)
    amp_dtype = AMP_DTYPES[args.amp]
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    # Shape check before timing: a model that does not return (B, C) logits is not a classifier.
    try:
        with torch.no_grad(), autocast:
            model.eval()
            out = model(x[:1])
            model.train()
    except Exception as e:  # noqa: BLE001 - e.g. a model that needs another input layout
        return {**row, "skipped": f"forward failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, args.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return {**row, "skipped": f"not a classifier: output {shape}, expected (1, {args.num_classes})"}

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        return time.perf_counter() - t0

    try:
        for _ in range(args.warmup):
            step()
        times = [step() for _ in range(args.steps)]
    except (RuntimeError, MemoryError) as e:  # e.g. CUDA out of memory at a large batch
        return {**row, "skipped": f"training step failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    finally:
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    row.update(times=times, warmup=args.warmup)
    return row


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge one model's rounds: median over every timed step of every round."""
    first = rounds[0]
    skipped = [r for r in rounds if "skipped" in r]
    if skipped:
        return {k: v for k, v in skipped[0].items() if k != "times"}
    times = [t for r in rounds for t in r["times"]]
    med = statistics.median(times)
    row = {k: v for k, v in first.items() if k != "times"}
    row.update(
        s_per_step=med,
        img_per_s=first["batch"] / med,
        s_per_step_min=min(times),
        s_per_step_max=max(times),
        round_medians=[statistics.median(r["times"]) for r in rounds],
        timed_steps=len(times),
    )
    if any("peak_mem_gib" in r for r in rounds):
        row["peak_mem_gib"] = max(r.get("peak_mem_gib", 0.0) for r in rounds)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | input size | params (M) | batch | img/s | s/step (median) | min–max s/step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r:
            continue
        lines.append(
            f"| {r['model']} | {r['input_size']} | {r['params_m']:.1f} | {r['batch']} | {r['img_per_s']:.1f} | "
            f"{r['s_per_step']:.3f} | {r['s_per_step_min']:.3f}–{r['s_per_step_max']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = list_models() if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    known = set(list_models())
    env = environment(args)
    print(f"# training throughput: {env['cpu'] if device.type == 'cpu' else env.get('gpu')}, torch {env['torch']}, "
          f"timm {env['timm']}, threads {env['torch_threads']}, amp {args.amp}, channels_last {args.channels_last}",
          file=sys.stderr)

    per_model: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rnd in range(args.repeats):
        for name in names:
            if any("skipped" in r for r in per_model[name]):
                continue  # a model that failed once is not retried
            if name not in known:
                per_model[name].append({"model": name, "skipped": "not registered"})
            else:
                print(f"  [{rnd + 1}/{args.repeats}] {name} ...", file=sys.stderr, flush=True)
                per_model[name].append(bench_model(name, args, device))
            r = per_model[name][-1]
            if "skipped" in r:
                print(f"  skipped {name}: {r['skipped']}", file=sys.stderr)
            else:
                med = statistics.median(r["times"])
                print(f"  {name}: {args.batch / med:.1f} img/s ({med:.3f} s/step)", file=sys.stderr)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
    rows = [summarise(per_model[name]) for name in names]
    if hasattr(os, "getloadavg"):
        env["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)  # >> cpu_count: the numbers are noisy

    print(markdown(rows))
    skipped = [r for r in rows if "skipped" in r]
    for r in skipped:
        print(f"\nskipped {r['model']}: {r['skipped']}", end="")
    if skipped:
        print()
    if args.json:
        payload = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "environment": env, "results": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if len(skipped) < len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
