"""The one report of ``edgederm run``: every number is read from what the stages wrote.

Test metrics come from ``RUN/pipeline-eval/*.json`` (``edgederm evaluate``'s function), latencies
from ``RUN/bench/results.jsonl`` (``edgederm bench``'s store, latest result per configuration),
gate verdicts from ``RUN/export/summary.json``. ``results.json`` holds the same table for tools.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bench.report import format_bytes, format_ms, html_table
from .fsutil import write_json_atomic, write_text_atomic
from .metrics import format_ci_entry

if TYPE_CHECKING:
    from .pipeline import State, _Ctx

REPORT_DIR = "pipeline-report"
EVAL_DIR = "pipeline-eval"

log = logging.getLogger(__name__)

Block = tuple  # ("h2", text) | ("p", text) | ("table", header, rows) | ("img", title, rel) | ("pre", text)


def export_results(ctx: "_Ctx") -> list[dict[str, Any]]:
    """The export stage's per-target results (its summary.json), or [] before it ran."""
    p = ctx.export_dir / "summary.json"
    if not p.exists():
        return []
    return list(json.loads(p.read_text(encoding="utf-8")).get("results", []))


def report_items(ctx: "_Ctx") -> list[tuple[str, Path]]:
    """(label, path) of every model the report covers: the ensemble, the student, the kept artifacts."""
    items = [("ensemble (PyTorch)", ctx.teacher)]
    if ctx.student_dir is not None:
        items.append(("student (PyTorch)", ctx.deployable))
    for r in export_results(ctx):
        if r["status"] == "pass" and r.get("path") and Path(r["path"]).exists():
            items.append((r["target"], Path(r["path"])))
    return items


def slug(label: str) -> str:
    """A file name for a report item's label."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label.split(" (")[0])



def ci_text(entry: dict[str, Any] | None) -> str:
    """``0.878 [0.842–0.909]`` (``edgederm.metrics.format_ci``) from a bootstrap entry."""
    if not entry or entry.get("value") is None:
        return "—"
    return format_ci_entry(entry)


def _bench_by_sha(bench_dir: Path) -> dict[str, dict[str, Any]]:
    """Latest ok result per artifact SHA-256 at batch 1 (the fastest of the measured thread counts)."""
    from .bench.report import latest
    from .bench.store import ResultsStore

    store = ResultsStore(bench_dir)
    if not store.path.exists():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for r in latest(store.read()):
        if r.get("status") != "ok" or r.get("batch") != 1 or r.get("target") != "local":
            continue
        sha = (r.get("artifact") or {}).get("sha256")
        p50 = (r.get("latency_ms") or {}).get("p50")
        if sha and p50 is not None and (sha not in out or p50 < out[sha]["latency_ms"]["p50"]):
            out[sha] = r
    return out


def collect(ctx: "_Ctx") -> list[dict[str, Any]]:
    """One row per model: identity, export gate, test metrics, latency — all from the stages' files."""

    gate = {r["target"]: r for r in export_results(ctx)}
    bench = _bench_by_sha(ctx.run_dir / "bench")
    rows: list[dict[str, Any]] = []
    for label, path in report_items(ctx):
        ev_file = ctx.run_dir / EVAL_DIR / f"{slug(label)}.json"
        ev = json.loads(ev_file.read_text(encoding="utf-8")) if ev_file.exists() else None
        sha = ev["sha256"] if ev else None
        g = gate.get(label, {})
        b = bench.get(sha or "", {})
        ci = (ev or {}).get("ci", {})
        rows.append({
            "label": label,
            "path": str(path),
            "sha256": sha,
            "format": g.get("format") or "pytorch",
            "precision": g.get("precision") or "fp32",
            "recipe": g.get("recipe"),
            # The export's size counts every file of the artifact (an OpenVINO IR's .bin too).
            "size_bytes": g.get("size_bytes") or (path.stat().st_size if path.exists() else None),
            "gate": (g.get("verdict") if g else "reference" if label == "student (PyTorch)" or ctx.student_dir is None else "teacher"),
            "test": {"split": (ev or {}).get("split"), "n": (ev or {}).get("n"), "tta_views": len((ev or {}).get("tta_views", [])),
                     **{k: ci.get(k) for k in ("bacc", "mel_sensitivity", "mel_specificity", "macro_auc")}},
            "bench": None if not b else {
                "runtime": b.get("runtime"), "threads": b.get("threads"), "p50_ms": b["latency_ms"].get("p50"),
                "p90_ms": b["latency_ms"].get("p90"), "load_ms": b.get("load_ms"), "peak_rss_bytes": b.get("peak_rss_bytes"),
                "e2e_p50_ms": (b.get("e2e_ms") or {}).get("p50"), "e2e_views": (b.get("e2e") or {}).get("views"),
                "result_id": b.get("id"),
            },
        })
    return rows


def _plots(ctx: "_Ctx", out: Path, blocks: list[Block]) -> None:
    from .report.plots import plot_confusion, plot_roc

    classes = None
    for label in ("ensemble (PyTorch)", "student (PyTorch)"):
        npz = ctx.run_dir / EVAL_DIR / f"{slug(label)}.npz"
        ev = ctx.run_dir / EVAL_DIR / f"{slug(label)}.json"
        if not npz.exists() or not ev.exists():
            continue
        if classes is None:
            from .card import load_card

            classes = list(load_card(ctx.teacher).classes)
        d = np.load(npz)
        split = json.loads(ev.read_text(encoding="utf-8")).get("split", "test")
        name = slug(label)
        c = plot_confusion(d["y_true"], d["y_pred"], classes, out / "plots" / f"confusion-{name}.png",
                           title=f"{label}: confusion on {split} (decision rule of its card)")
        r = plot_roc(d["y_true"], d["probs"], classes, out / "plots" / f"roc-{name}.png", title=f"{label}: ROC on {split}")
        blocks += [("img", f"{label} — confusion matrix ({split})", c.relative_to(out)),
                   ("img", f"{label} — ROC ({split})", r.relative_to(out))]


def _gradcam(ctx: "_Ctx", out: Path, blocks: list[Block]) -> None:
    from .explain import explain_run

    try:
        res = explain_run(ctx.deployable, ctx.cfg.data, ctx.cfg.format, out, n_images=int(ctx.pcfg.gradcam["n_images"]),
                          taxonomy=ctx.cfg.taxonomy)
    except Exception as e:  # noqa: BLE001 - a plotting problem must not fail a finished pipeline
        log.warning("Grad-CAM grid not drawn: %s", e)
        blocks.append(("p", f"Grad-CAM grid not drawn: {str(e).splitlines()[0]}"))
        return
    png = out / "gradcam.png"
    if png.exists():
        blocks.append(("img", f"Grad-CAM of {ctx.deployable.parent.name}/{ctx.deployable.name} "
                              f"({ctx.pcfg.gradcam['n_images']} images spread over the data set)", png.relative_to(out)))
    if res.get("summary"):
        blocks.append(("pre", json.dumps(res["summary"], indent=1, default=str)[:2000]))


def write_pipeline_report(ctx: "_Ctx", state: "State") -> dict[str, Path]:
    """Write ``RUN/pipeline-report/{report.md, report.html, results.json, plots/}``."""
    from .bench.report import write_report as write_bench_report
    from .card import load_card

    out = ctx.run_dir / REPORT_DIR
    (out / "plots").mkdir(parents=True, exist_ok=True)
    card = load_card(ctx.teacher)
    rows = collect(ctx)
    cfg = ctx.cfg
    blocks: list[Block] = []
    counts = card.data.get("counts", {})
    blocks.append(("p", f"Recipe `{cfg.name}` on `{card.data.get('dataset')}` ({cfg.data}); classes {', '.join(card.classes)}; "
                        f"lesion-grouped split (no lesion in two splits): {', '.join(f'{k} {v}' for k, v in counts.items())}."))
    # Stages
    stage_rows = []
    for r in ctx.results:
        e = state.entry(r.name)
        took = r.seconds if r.status == "ran" else e.get("seconds")
        stage_rows.append([r.name, r.status, "—" if took is None else f"{took:.0f} s", r.note])
    total = sum(r.seconds for r in ctx.results)
    blocks += [("h2", "Stages"), ("table", ["stage", "this run", "time", "note"], stage_rows),
               ("p", f"This run: {total:.0f} s wall (a skipped stage shows the time it took when it ran).")]
    # Results
    split = rows[0]["test"]["split"] if rows else "test"
    n = rows[0]["test"]["n"] if rows else None
    res_rows = []
    for r in rows:
        t, b = r["test"], r["bench"] or {}
        res_rows.append([r["label"], f"{r['format']} {r['precision']}" + (f" (recipe {r['recipe']})" if r.get("recipe") not in (None, "default") else ""),
                         format_bytes(r["size_bytes"]), str(r["gate"]), ci_text(t.get("bacc")), ci_text(t.get("mel_sensitivity")),
                         ci_text(t.get("mel_specificity")), format_ms(b.get("p50_ms")), format_ms(b.get("p90_ms")),
                         format_ms(b.get("e2e_p50_ms")) + (f" ({b['e2e_views']} views)" if (b.get("e2e_views") or 1) > 1 else ""),
                         f"{b.get('runtime')} ×{b.get('threads')}" if b else "—"])
    blocks += [("h2", "Results"),
               ("p", f"Accuracy on the {split} split (n = {n} images, never used for training, early stopping or thresholds), "
                     "decided with each card's rule (calibrated thresholds with the multi-class rule, or argmax when the "
                     "targets could not be met on validation), 95% lesion-level bootstrap CIs. Latency: batch 1, p50/p90 of "
                     "steady-state runs; image → decision includes JPEG decode, preprocessing and every TTA view."),
               ("table", ["model", "format", "size", "export gate (val)", "BACC [95% CI]", "MEL sensitivity", "MEL specificity",
                          "p50 ms", "p90 ms", "image→decision ms", "runtime"], res_rows)]
    # Decision rule
    dec = card.decision or {}
    blocks += [("h2", "Clinical decision rule (ensemble card)"), ("pre", json.dumps(
        {k: dec.get(k) for k in ("rule", "priority", "thresholds", "fallback") if k in dec}, indent=1, default=str))]
    # Plots
    blocks.append(("h2", "Confusion matrices and ROC"))
    _plots(ctx, out, blocks)
    blocks.append(("h2", "Grad-CAM"))
    _gradcam(ctx, out, blocks)
    # Gate
    gate_md = ctx.export_dir / "gate.md"
    if gate_md.exists():
        text = gate_md.read_text(encoding="utf-8").split("\n", 1)[-1].strip()
        blocks += [("h2", "Export gate (validation split, against the FP32 checkpoint)"), ("md", text)]
    # Bench + Pareto
    bench_dir = ctx.run_dir / "bench"
    if (bench_dir / "results.jsonl").exists():
        paths = write_bench_report(bench_dir)
        blocks.append(("h2", "Latency vs BACC"))
        for key in ("plot:pareto", *(k for k in paths if k.startswith("plot:latency"))):
            if key in paths:
                dst = out / "plots" / f"bench-{paths[key].name}"
                shutil.copyfile(paths[key], dst)
                blocks.append(("img", "Pareto: latency vs BACC (gate BACC on validation)" if key == "plot:pareto"
                               else "Latency distribution", dst.relative_to(out)))
        blocks.append(("p", f"Full benchmark report: `{paths['markdown']}`."))
    # How to reproduce
    data_flag = f"--data {cfg.data}" + (f" --format {cfg.format}" if cfg.format != "auto" else "")
    blocks += [("h2", "Reproduce any number by hand"), ("pre", "\n".join([
        f"edgederm evaluate ARTIFACT {data_flag} --split-file {ctx.run_dir / 'split.csv'} --split {split} --n-boot {cfg.n_boot}",
        f"edgederm bench {ctx.export_dir} {ctx.teacher} --target local --out {bench_dir}"
        + "".join(f" --threads {t}" for t in sorted({(r['bench'] or {}).get('threads') for r in rows} - {None})),
    ]))]
    skipped = [r for r in export_results(ctx) if r["status"] != "pass"]
    if skipped:
        blocks += [("h2", "Targets not kept"), ("table", ["target", "status", "reason"],
                                                 [[r["target"], r["status"], str(r.get("reason") or "")[:200]] for r in skipped])]
    title = f"edgederm run — {cfg.name}"
    md, html_path, res_path = out / "report.md", out / "report.html", out / "results.json"
    write_text_atomic(md, _markdown(title, blocks))
    write_text_atomic(html_path, _html(title, blocks))
    write_json_atomic(res_path, {"recipe": cfg.name, "split": split, "n": n, "rows": rows,
                                 "stages": [r.__dict__ for r in ctx.results]})
    return {"markdown": md, "html": html_path, "results": res_path}


def _table_md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(title: str, blocks: list[Block]) -> str:
    parts = [f"# {title}", ""]
    for b in blocks:
        kind = b[0]
        if kind == "h2":
            parts += [f"## {b[1]}", ""]
        elif kind in ("p", "md"):
            parts += [b[1], ""]
        elif kind == "table":
            parts += [_table_md(b[1], b[2]), ""]
        elif kind == "img":
            parts += [f"![{b[1]}]({Path(b[2]).as_posix()})", ""]
        elif kind == "pre":
            parts += ["```", b[1], "```", ""]
    return "\n".join(parts)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.5em 0}pre{background:#f7f7f7;padding:.8em;overflow:auto}")


def _md_table_to_html(text: str) -> str:
    """The gate's Markdown (a paragraph and a pipe table) as HTML, cells escaped."""
    out, rows = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
            continue
        if rows:
            out.append(html_table(rows[0], rows[1:]))
            rows = []
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if rows:
        out.append(html_table(rows[0], rows[1:]))
    return "\n".join(out)


def _html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>", f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    for b in blocks:
        kind = b[0]
        if kind == "h2":
            parts.append(f"<h2>{e(b[1])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif kind == "md":
            parts.append(_md_table_to_html(b[1]))
        elif kind == "table":
            parts.append(html_table(b[1], b[2]))
        elif kind == "img":
            parts.append(f"<h3>{e(b[1])}</h3><img src='{e(Path(b[2]).as_posix())}' alt='{e(b[1])}'>")
        elif kind == "pre":
            parts.append(f"<pre>{e(b[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
