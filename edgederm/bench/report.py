"""Bench folder → ``report.md``, ``report.html`` and ``plots/*.png``.

The results store is append-only, so a configuration measured twice has two results; the report
shows the latest result of each configuration (target, artifact, runtime, delegate, threads,
batch) and says how many results it read. Plots:

* ``plots/latency-<target>.png``: the latency distribution of every configuration (box: quartiles,
  whiskers: p5–p95 when samples exist; from the tool's own percentiles otherwise);
* ``plots/pareto.png``: p50 latency (batch 1, each artifact's fastest thread count) vs BACC from
  the artifact's card (the export gate's validation BACC; else the card's validation BACC), with
  the Pareto frontier (no other point is both faster and more accurate);
* ``plots/threads.png``: throughput vs threads, when more than one thread count was measured.
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import EdgedermError
from ..fsutil import write_text_atomic
from ..metrics import format_ci
from .env import isa_summary
from .store import ResultsStore

log = logging.getLogger(__name__)


# -- selection -------------------------------------------------------------------------------------
def config_key(r: dict[str, Any]) -> tuple[Any, ...]:
    a = r.get("artifact") or {}
    return (r.get("target"), a.get("sha256") or a.get("path"), r.get("runtime"), r.get("delegate"), r.get("threads"), r.get("batch"))


def latest(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest result of each configuration, in first-seen order."""
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in results:
        last[config_key(r)] = r  # later lines win: the store is oldest-first
    return list(last.values())


def _p50(r: dict[str, Any]) -> float | None:
    lat = r.get("latency_ms") or {}
    return lat.get("p50") if lat.get("p50") is not None else lat.get("mean")


def pareto_points(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per (target, artifact, runtime, delegate) at the smallest batch measured, at its
    fastest thread count, for results whose card gives a BACC; ``frontier`` marks the Pareto set."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    ok = [r for r in results if r.get("status") == "ok" and _p50(r) is not None and (r.get("accuracy") or {}).get("bacc") is not None]
    min_batch: dict[tuple[Any, ...], int] = {}
    for r in ok:
        k = (r["target"], r["artifact"].get("sha256"), r["runtime"], r.get("delegate"))
        min_batch[k] = min(min_batch.get(k, r["batch"]), r["batch"])
    for r in ok:
        k = (r["target"], r["artifact"].get("sha256"), r["runtime"], r.get("delegate"))
        if r["batch"] != min_batch[k]:
            continue
        if k not in best or _p50(r) < _p50(best[k]):  # type: ignore[operator]
            best[k] = r
    pts = [{"label": short_label(r), "target": r["target"], "latency_ms": _p50(r), "bacc": r["accuracy"]["bacc"],
            "lo": r["accuracy"].get("lo"), "hi": r["accuracy"].get("hi"), "source": r["accuracy"].get("source"),
            "threads": r.get("threads"), "batch": r.get("batch"), "runtime": r["runtime"],
            "gate_passed": r["accuracy"].get("gate_passed"), "result": r} for r in best.values()]
    # Frontier: walking from fastest to slowest, a point is on it if it beats every faster point's BACC.
    best_bacc = -math.inf
    for p in sorted(pts, key=lambda p: (p["latency_ms"], -p["bacc"])):
        p["frontier"] = p["bacc"] > best_bacc
        best_bacc = max(best_bacc, p["bacc"])
    return pts


# -- formatting ------------------------------------------------------------------------------------
def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    x = float(x)
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.{digits}g}"
    return f"{x:,.{digits}f}"


def format_ms(x: Any) -> str:
    """A latency in ms: 3 decimals under 1 ms, 2 under 100, then whole; ``—`` when missing."""
    if x is None:
        return "—"
    x = float(x)
    return f"{x:.3f}" if x < 1 else (f"{x:.2f}" if x < 100 else f"{x:,.0f}")


def format_bytes(n: Any) -> str:
    """A size in B / kB / MB / GB (decimal units); ``—`` when missing."""
    if n is None:
        return "—"
    n = float(n)
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def _flops(n: Any) -> str:
    if n is None:
        return "—"
    n = float(n)
    for unit, div in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} FLOP"


def short_label(r: dict[str, Any]) -> str:
    """A result's artifact label, with its precision in brackets unless the label names it."""
    a = r.get("artifact") or {}
    prec = a.get("precision")
    lab = str(a.get("label") or a.get("file"))
    return f"{lab}" + (f" [{prec}]" if prec and prec not in lab else "")


def _config(r: dict[str, Any]) -> str:
    d = f" [{r['delegate']}]" if r.get("delegate") else ""
    t = r.get("threads") or "default"
    return f"{r.get('runtime')}{d}, {t} thr, b{r.get('batch')}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "target"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "|".join("---" if i == 0 else "---:" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", "|" + align + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def latency_rows(ok: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["artifact", "target", "runtime", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms",
              "min ms", "max ms", "runs", "throughput img/s"]
    rows = []
    for r in ok:
        lat = r.get("latency_ms") or {}
        rt = r["runtime"] + (f" [{r['delegate']}]" if r.get("delegate") else "")
        rows.append([short_label(r), str(r["target"]), rt, str(r.get("threads") or "default"), str(r.get("batch")),
                     format_ms(lat.get("p50")), format_ms(lat.get("p90")), format_ms(lat.get("p99")),
                     (f"{format_ms(lat['mean'])} ± {format_ms(lat['std'])}" if lat.get("std") is not None else format_ms(lat["mean"]))
                     if lat.get("mean") is not None else "—",
                     format_ms(lat.get("min")), format_ms(lat.get("max")), str(lat.get("n", "—")), _f(r.get("throughput_ips"), 1)])
    return header, rows


def cost_rows(ok: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["artifact", "target", "runtime", "threads", "batch", "size", "load ms", "first inference ms", "peak RSS",
              "image → decision p50 ms", "FLOPs / image", "GFLOP/s (p50)", "% of peak", "BACC"]
    rows = []
    for r in ok:
        e2e = r.get("e2e_ms") or {}
        e2e_txt = "—"
        if e2e.get("p50") is not None:
            views = (r.get("e2e") or {}).get("views")
            e2e_txt = format_ms(e2e["p50"]) + (f" ({views} views)" if views and views > 1 else "")
        g = r.get("gflops") or {}
        frac = g.get("fraction_of_peak")
        acc = r.get("accuracy") or {}
        rss = r.get("peak_rss_bytes")
        if rss is None and (r.get("memory_footprint_mb") or {}).get("overall") is not None:
            rss_txt = f"{r['memory_footprint_mb']['overall']:.1f} MB Δ (tool)"
        else:
            rss_txt = format_bytes(rss)
        rt = r["runtime"] + (f" [{r['delegate']}]" if r.get("delegate") else "")
        rows.append([short_label(r), str(r["target"]), rt, str(r.get("threads") or "default"), str(r.get("batch")),
                     format_bytes((r.get("artifact") or {}).get("size_bytes")), format_ms(r.get("load_ms")), format_ms(r.get("first_inference_ms")),
                     rss_txt, e2e_txt, _flops((r.get("flops") or {}).get("per_image")), _f(g.get("achieved"), 2),
                     f"{100 * frac:.1f}%" if frac is not None else "—",
                     f"{acc['bacc']:.3f}" if acc.get("bacc") is not None else "—"])
    return header, rows


def environments(ok: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One description per target (its latest result's environment), with the commands that ran."""
    by_target: dict[str, dict[str, Any]] = {}
    for r in ok:
        by_target[r["target"]] = r
    out = []
    for target, r in by_target.items():
        env = r.get("env") or {}
        cpu = env.get("cpu") or {}
        peak = env.get("peak") or {}
        rows = [
            ("CPU", f"{cpu.get('model')} ({cpu.get('arch')})" + (", virtual machine" if cpu.get("hypervisor") else "")),
            ("cores", f"{cpu.get('physical_cores') or '?'} cores, {cpu.get('logical_cpus') or '?'} logical CPUs, {cpu.get('usable_cpus') or '?'} usable"),
            ("ISA", isa_summary(cpu.get("isa"))),
            ("clock", f"{cpu.get('mhz'):.0f} MHz ({cpu.get('mhz_source')})" if cpu.get("mhz") else "unknown"),
            ("governor", cpu.get("governor") or "not readable"),
            ("peak FP32", f"{peak.get('isa_basis')}; machine: {peak.get('cores')} cores × {peak.get('per_core_gflops', 0):.1f} "
                          f"GFLOP/s = {peak.get('machine_gflops', 0):.1f} GFLOP/s; per run: cores used × per-core peak" if peak else "unknown (no clock)"),
            ("OS / Python", f"{env.get('os')} / {env.get('python') or '—'}"),
            ("versions", ", ".join(f"{k} {v}" for k, v in sorted((env.get("versions") or {}).items()))),
        ]
        if env.get("android"):
            a = env["android"]
            rows.insert(0, ("device", f"{a.get('ro.product.manufacturer')} {a.get('ro.product.model')}, Android {a.get('ro.build.version.release')}"))
        if r.get("power"):
            p = r["power"]
            rows.append(("power (tegrastats)", f"{_f(p.get('total_mw'), 0)} mW mean input power over {p.get('samples')} samples"))
        out.append({"target": target, "rows": rows, "command": r.get("command"), "exec_command": r.get("exec_command"),
                    "tool": r.get("tool")})
    return out


# -- plots -----------------------------------------------------------------------------------------
def _box_stats(r: dict[str, Any], label: str) -> dict[str, Any] | None:
    s = r.get("samples_ms")
    lat = r.get("latency_ms") or {}
    if s:
        a = np.asarray(s, dtype=float)
        q1, med, q3, p5, p95 = np.percentile(a, [25, 50, 75, 5, 95])
        return {"label": label, "med": med, "q1": q1, "q3": q3, "whislo": p5, "whishi": p95,
                "fliers": a[(a < p5) | (a > p95)][:200]}
    if lat.get("p50") is not None:  # a tool that reports percentiles only (benchmark_model, trtexec)
        lo = lat.get("p5", lat.get("min", lat["p50"]))
        hi = lat.get("p95", lat.get("p90", lat.get("max", lat["p50"])))
        return {"label": label, "med": lat["p50"], "q1": lo, "q3": hi, "whislo": lat.get("min", lo),
                "whishi": lat.get("max", hi), "fliers": []}
    if lat.get("mean") is not None:
        return {"label": label, "med": lat["mean"], "q1": lat["mean"], "q3": lat["mean"], "whislo": lat["mean"],
                "whishi": lat["mean"], "fliers": []}
    return None


def plot_latency(ok: Sequence[dict[str, Any]], path: Path, title: str) -> Path | None:
    from ..report.plots import figure, save_figure

    stats = [s for s in (_box_stats(r, f"{short_label(r)} · {_config(r)}") for r in ok) if s is not None]
    if not stats:
        return None
    fig = figure(8.5, 1.2 + 0.42 * len(stats))
    ax = fig.add_subplot(1, 1, 1)
    kw = {"showfliers": True, "flierprops": {"markersize": 2, "alpha": 0.4}}
    try:
        ax.bxp(stats[::-1], orientation="horizontal", **kw)  # matplotlib >= 3.10
    except TypeError:
        ax.bxp(stats[::-1], vert=False, **kw)
    vals = [v for s in stats for v in (s["whislo"], s["whishi"]) if v and v > 0]
    if vals and max(vals) / min(vals) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("latency per batch (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", labelsize=7)
    return save_figure(fig, path)


def plot_pareto(points: Sequence[dict[str, Any]], path: Path) -> Path | None:
    from ..report.plots import colours, figure, save_figure

    if not points:
        return None
    fig = figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    targets = sorted({p["target"] for p in points})
    palette = dict(zip(targets, colours(max(len(targets), 1))))
    xs, ys = [p["latency_ms"] for p in points], [p["bacc"] for p in points]
    xspan, yspan = (max(xs) - min(xs)) or max(xs) or 1.0, (max(ys) - min(ys)) or 0.05
    placed: list[tuple[float, float]] = []
    for t in targets:
        for failed in (False, True):  # artifacts that failed the export gate: "x" markers
            pts = [p for p in points if p["target"] == t and (p.get("gate_passed") is False) == failed]
            if not pts:
                continue
            x = [p["latency_ms"] for p in pts]
            y = [p["bacc"] for p in pts]
            yerr = None
            if all(p["lo"] is not None and p["hi"] is not None for p in pts):
                yerr = [[p["bacc"] - p["lo"] for p in pts], [p["hi"] - p["bacc"] for p in pts]]
            ax.errorbar(x, y, yerr=yerr, fmt="x" if failed else "o", color=palette[t], ecolor=palette[t], alpha=0.85,
                        capsize=3, label=f"{t} (failed the export gate)" if failed else t)
            for p in pts:
                # Points that sit on top of each other get their labels stacked instead of overprinted.
                near = sum(1 for q in placed if abs(q[0] - p["latency_ms"]) <= 0.08 * xspan and abs(q[1] - p["bacc"]) <= 0.12 * yspan)
                placed.append((p["latency_ms"], p["bacc"]))
                ax.annotate(f"{p['label']}\n{p['runtime']}, {p['threads'] or 'def'} thr", (p["latency_ms"], p["bacc"]),
                            textcoords="offset points", xytext=(5, 4 - 20 * near), fontsize=6.5)
    front = sorted((p for p in points if p["frontier"]), key=lambda p: p["latency_ms"])
    if len(front) > 1:
        ax.step([p["latency_ms"] for p in front], [p["bacc"] for p in front], where="post", color="0.3", lw=1, ls="--",
                label="Pareto frontier")
    for p in front:
        ax.scatter([p["latency_ms"]], [p["bacc"]], s=120, facecolors="none", edgecolors="0.2", lw=1)
    lat = [p["latency_ms"] for p in points]
    if max(lat) / max(min(lat), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency, batch {points[0]['batch']} (ms) — lower is better")
    ax.set_ylabel("BACC from each card (export gate, validation) — higher is better")
    ax.set_title("Latency vs balanced accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def plot_threads(ok: Sequence[dict[str, Any]], path: Path) -> Path | None:
    from ..report.plots import colours, figure, save_figure

    series: dict[tuple[Any, ...], list[tuple[int, float]]] = defaultdict(list)
    for r in ok:
        if r.get("threads") and r.get("throughput_ips"):
            series[(r["target"], short_label(r), r["runtime"], r.get("delegate"), r["batch"])].append((int(r["threads"]), float(r["throughput_ips"])))
    series = {k: sorted(v) for k, v in series.items() if len({t for t, _ in v}) > 1}
    if not series:
        return None
    fig = figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for (k, pts), c in zip(series.items(), colours(len(series))):
        ax.plot([t for t, _ in pts], [v for _, v in pts], "o-", color=c, label=f"{k[1]} · {k[2]} · b{k[4]} ({k[0]})")
    ax.set_xlabel("threads")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title("Thread scaling", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)
    return save_figure(fig, path)


# -- the report ------------------------------------------------------------------------------------
def write_report(out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` for a bench folder."""
    out = Path(out_dir)
    store = ResultsStore(out)
    if not store.path.exists():
        raise EdgedermError(f"{out}: no {store.path.name} here (run `edgederm bench ... --out {out}` first)")
    every = store.read()
    if not every:
        raise EdgedermError(f"{store.path}: no results")
    cur = latest(every)
    ok = [r for r in cur if r.get("status") == "ok"]
    bad = [r for r in cur if r.get("status") != "ok"]
    plots_dir = out / "plots"
    plots: list[tuple[str, Path]] = []
    for target in dict.fromkeys(r["target"] for r in ok):
        p = plot_latency([r for r in ok if r["target"] == target], plots_dir / f"latency-{_slug(target)}.png",
                         f"Latency distribution — {target}")
        if p:
            plots.append((f"Latency distribution — {target}", p))
    points = pareto_points(ok)
    p = plot_pareto(points, plots_dir / "pareto.png")
    if p:
        plots.append(("Pareto: latency vs BACC", p))
    p = plot_threads(ok, plots_dir / "threads.png")
    if p:
        plots.append(("Thread scaling", p))

    doc = _document(every, cur, ok, bad, points, plots, out)
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, _markdown(doc))
    write_text_atomic(html_path, _html(doc))
    return {"markdown": md_path, "html": html_path, **{f"plot:{p.stem}": p for _, p in plots}}


def _document(every: list[dict[str, Any]], cur: list[dict[str, Any]], ok: list[dict[str, Any]], bad: list[dict[str, Any]],
              points: list[dict[str, Any]], plots: list[tuple[str, Path]], out: Path) -> dict[str, Any]:
    runs = sorted({r.get("run_id") for r in every if r.get("run_id")})
    flop_methods = sorted({(r.get("flops") or {}).get("method") for r in ok if r.get("flops")} - {None})
    acc_sources = sorted({(r.get("accuracy") or {}).get("source") for r in ok if r.get("accuracy")} - {None})
    no_acc = sorted({short_label(r) for r in ok if not (r.get("accuracy") or {}).get("bacc")})
    protocol = sorted({(p.get("warmup"), p.get("runs"), p.get("min_time_s")) for p in
                       ((r.get("protocol") or {}) for r in ok) if p}, key=str)
    return {
        "summary": f"{len(every)} results read from results.jsonl ({len(runs)} bench run(s)); "
                   f"{len(cur)} configuration(s), latest result of each shown: {len(ok)} measured, "
                   f"{sum(r.get('status') == 'skipped' for r in bad)} skipped, {sum(r.get('status') == 'error' for r in bad)} failed.",
        "latency": latency_rows(ok),
        "cost": cost_rows(ok),
        "pareto": points,
        "envs": environments(ok),
        "bad": bad,
        "plots": [(title, p.relative_to(out)) for title, p in plots],
        "flop_methods": flop_methods,
        "acc_sources": acc_sources,
        "no_acc": no_acc,
        "protocol": protocol,
    }


_NOTES = [
    "Latency: time of one synchronous inference of one batch, after the first inference and the warm-up runs "
    "(edgederm and the runner: `time.perf_counter_ns` around the runtime call, garbage collector paused; "
    "benchmark_model and trtexec: their own timers). p50/p90/p99 interpolate linearly between ranks.",
    "Throughput: batch × 1000 / mean latency (one synchronous stream).",
    "Load: the cold start of a fresh process — `edgederm.runtime.load` (card, session creation / compilation) "
    "locally, session creation in the runner, `Init` for benchmark_model. Import of the runtime module is recorded separately (`import_ms`).",
    "Peak RSS: the measuring process's VmHWM at the end (runtime, model, buffers, Python). "
    "benchmark_model reports its own memory delta instead.",
    "Image → decision: `Predictor.predict([jpeg])` at batch 1 — JPEG decode, the card's preprocessing for every TTA view, "
    "inference, softmax/ensemble, decision rule (local target only).",
    "GFLOP/s: FLOPs per image × batch / p50; peak = cores used × clock × FP32 FLOP/cycle (an FMA counts as 2 FLOP, like model FLOPs = 2 × MACs). "
    "INT8 artifacts are counted with the same FLOPs as their FP32 network (operations, not FP32 FLOPs).",
]


def _markdown(doc: dict[str, Any]) -> str:
    lines = ["# Benchmark report", "", doc["summary"], ""]
    lines += ["## Latency", "", _table(*doc["latency"]), ""]
    lines += ["## Cold start, memory, end-to-end, compute, accuracy", "", _table(*doc["cost"]), ""]
    if doc["pareto"]:
        lines += ["## Pareto: latency vs BACC", "",
                  "One point per artifact and runtime (its fastest thread count at the smallest batch); on the frontier, "
                  "no other point is both faster and more accurate. BACC alone does not make an artifact deployable: "
                  "the export gate also checks melanoma sensitivity and every class's recall.", "",
                  _table(["artifact", "target", "runtime", "threads", "p50 ms", "BACC [95% CI]", "BACC source", "export gate", "Pareto"],
                         _pareto_rows(doc["pareto"])), ""]
    if doc["no_acc"]:
        lines += [f"Not on the Pareto plot (their card records no BACC): {', '.join(doc['no_acc'])}.", ""]
    for title, rel in doc["plots"]:
        lines += [f"![{title}]({rel.as_posix()})", ""]
    lines += ["## Environment", ""]
    for env in doc["envs"]:
        lines += [f"### {env['target']}", "", _table(["", ""], [[k, str(v)] for k, v in env["rows"]], "---|---"), ""]
        if env.get("command"):
            lines += ["Bench command:", "", "```", env["command"], "```", ""]
        if env.get("exec_command"):
            lines += [f"Command run for the latest result ({env['tool']}):", "", "```", env["exec_command"], "```", ""]
    if doc["bad"]:
        lines += ["## Skipped or failed", ""]
        lines += [f"- {short_label(r)} · {_config(r)} on {r['target']}: **{r['status']}** — {r.get('error')}" for r in doc["bad"]]
        lines.append("")
    lines += ["## How these numbers are measured", ""] + [f"- {n}" for n in _NOTES]
    if doc["protocol"]:
        lines.append("- Protocol(s): " + "; ".join(f"{w} warm-up runs, ≥ {r} timed runs, ≥ {t:g} s" for w, r, t in doc["protocol"]) + ".")
    if doc["flop_methods"]:
        lines.append("- FLOPs counted by: " + "; ".join(doc["flop_methods"]) + ".")
    if doc["acc_sources"]:
        lines.append("- BACC taken from: " + "; ".join(doc["acc_sources"]) + ".")
    return "\n".join(lines) + "\n"


def _pareto_rows(points: Sequence[dict[str, Any]]) -> list[list[str]]:
    gate = {True: "pass", False: "FAIL", None: "—"}
    return [[p["label"], p["target"], p["runtime"], str(p["threads"] or "default"), format_ms(p["latency_ms"]),
             format_ci(p["bacc"], p["lo"], p["hi"]),
             p["source"] or "—", gate.get(p.get("gate_passed"), "—"), "**yes**" if p["frontier"] else ""]
            for p in sorted(points, key=lambda p: p["latency_ms"])]


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}.front{font-weight:bold}"""


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; every cell is escaped (cells are plain text)."""
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _html(doc: dict[str, Any]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>edgederm benchmark report</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>Benchmark report</h1>", f"<p>{e(doc['summary'])}</p>",
             "<h2>Latency</h2>", html_table(*doc["latency"]),
             "<h2>Cold start, memory, end-to-end, compute, accuracy</h2>", html_table(*doc["cost"])]
    if doc["pareto"]:
        rows = [[c.replace("**", "") for c in row] for row in _pareto_rows(doc["pareto"])]
        parts += ["<h2>Pareto: latency vs BACC</h2>",
                  html_table(["artifact", "target", "runtime", "threads", "p50 ms", "BACC [95% CI]", "BACC source", "export gate", "Pareto"], rows)]
    if doc["no_acc"]:
        parts.append(f"<p>Not on the Pareto plot (their card records no BACC): {e(', '.join(doc['no_acc']))}.</p>")
    for title, rel in doc["plots"]:
        parts.append(f"<h3>{e(title)}</h3><img src='{e(rel.as_posix())}' alt='{e(title)}'>")
    parts.append("<h2>Environment</h2>")
    for env in doc["envs"]:
        parts += [f"<h3>{e(env['target'])}</h3>", html_table(["", ""], [[k, str(v)] for k, v in env["rows"]])]
        if env.get("command"):
            parts.append(f"<p>Bench command:</p><pre>{e(env['command'])}</pre>")
        if env.get("exec_command"):
            parts.append(f"<p>Command run for the latest result ({e(str(env['tool']))}):</p><pre>{e(env['exec_command'])}</pre>")
    if doc["bad"]:
        parts.append("<h2>Skipped or failed</h2><ul>")
        parts += [f"<li>{e(short_label(r))} · {e(_config(r))} on {e(r['target'])}: <b>{e(r['status'])}</b> — {e(str(r.get('error')))}</li>"
                  for r in doc["bad"]]
        parts.append("</ul>")
    parts.append("<h2>How these numbers are measured</h2><ul>")
    parts += [f"<li>{e(n)}</li>" for n in _NOTES]
    if doc["flop_methods"]:
        parts.append(f"<li>FLOPs counted by: {e('; '.join(doc['flop_methods']))}.</li>")
    if doc["acc_sources"]:
        parts.append(f"<li>BACC taken from: {e('; '.join(doc['acc_sources']))}.</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"
