"""Run reports: figures (confusion, ROC, reliability, training curves) and ``report.md``.

A training run folder (``runs/<name>/``) holds everything a reviewer needs; this module turns it
into one Markdown page with figures, so a run can be judged without opening JSON files:

* ``model.pt.card.json`` (required; else the card embedded in ``model.pt``): classes, data set
  and fingerprint, split counts, ensemble members, TTA views, decision rule, provenance.
* ``metrics.json`` (required): ``{"val": EvalResult.summary(), "test": ..., "train_seconds"}``,
  optionally ``"clinical"`` and ``"seeds"`` (shapes below).
* ``predictions/{val,test}.npz`` (optional): ``y_true`` (N,), ``probs`` (N, C), ``y_pred`` (N,),
  ``image_ids``, ``groups``, ``classes`` — the source of the confusion / ROC / reliability plots.
* ``history.json`` (optional; else the members' ``history`` in the card): per member a list of
  ``{"epoch", "loss", "val_bacc", "seconds"[, "val_loss", "lr"]}``.
* ``split.csv``, ``gradcam.png``, ``cam_in_mask.json`` (optional).

Every number in the report is read from those files, never recomputed differently: the figures
take their AUC / ECE from ``edgederm.metrics`` so a figure and the table next to it agree. The
predictions are cross-checked against ``metrics.json`` and the card's decision rule, and any
disagreement (a stale file) is printed at the top of the report.

Optional parts of ``metrics.json``:

* ``"clinical": {"val": R, "test": R}`` with R = ``edgederm.thresholds.clinical_report(...)``
  (per target class: sensitivity / specificity under the multi-class rule with CIs, floors,
  ``met`` and ``met_at_lower_bound``, argmax numbers; BACC with the rule vs argmax). Without it
  the thresholds section takes each split's bootstrap of ``sensitivity/<cls>`` — computed on the
  rule's decisions, so the same quantity — and the floors from the card's
  ``decision["targets"]``.
* ``"seeds": [{"seed": 1, "val": X, "test": X}, ...]`` with X a summary or a flat
  ``{metric: value}`` dict (as in the trainer's ``seeds.json`` runs): mean ± SD over seeds.
* ``val.note`` (what the validation probabilities are, e.g. out-of-fold), ``world_size``.

The card's decision is read as ``edgederm.thresholds.calibrate`` writes it: ``thresholds``,
``priority``, ``fallback`` (``{cls: level}``), ``fallback_fired``, ``targets``,
``calibrated_on``.

The figure functions (``plots``) are reusable for export / gate / bench reports; so are the
Markdown builders (``formatting``) ``metrics_table``, ``per_class_table`` and
``thresholds_section``. This module writes ``report.md``; ``reading`` reads the run folder.
"""


from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..decision import decide
from ..errors import EdgedermError
from ..fsutil import write_text_atomic
from ..metrics import ECE_BINS
from .formatting import (
    SPLITS,
    _cam_table,
    _duration,
    _member_size,
    _members_table,
    _seeds_section,
    _value,
    metrics_table,
    per_class_table,
    thresholds_section,
)
from .plots import plot_confusion, plot_reliability, plot_roc, plot_training_curves
from .reading import Predictions, _read_card, _read_history, _read_json, _split_table, load_predictions

log = logging.getLogger(__name__)

__all__ = ["write_run_report"]


def _check_predictions(split: str, pred: Predictions, summary: Mapping[str, Any] | None,
                       decision: Mapping[str, Any]) -> list[str]:
    """Disagreements between a predictions file, metrics.json and the card: signs of a stale file."""
    notes = []
    n = (summary or {}).get("n")
    if n is not None and int(n) != len(pred.y_true):
        notes.append(f"predictions/{split}.npz has {len(pred.y_true)} images but metrics.json reports n={n}")
    try:
        rule = decide(pred.probs, pred.classes, dict(decision))
    except ValueError as e:
        notes.append(f"the card's decision rule cannot be applied to predictions/{split}.npz: {e}")
    else:
        diff = int(np.count_nonzero(rule != pred.y_pred))
        if diff:
            notes.append(f"predictions/{split}.npz: y_pred differs from the card's decision rule on {diff} images")
    bacc = _value(((summary or {}).get("metrics") or {}).get("bacc"))
    if bacc is not None and n is not None and int(n) == len(pred.y_true):
        present = np.unique(pred.y_true)
        recall = [np.mean(pred.y_pred[pred.y_true == c] == c) for c in present]
        if abs(float(np.mean(recall)) - bacc) > 1e-6:
            notes.append(f"predictions/{split}.npz gives BACC {np.mean(recall):.4f} but metrics.json says {bacc:.4f}")
    return notes


# --------------------------------------------------------------------------------------------
# the report


def write_run_report(run_dir: str | Path) -> Path:
    """Make ``run_dir/plots/*.png`` and write ``run_dir/report.md``; returns the report's path.

    ``run_dir`` is a training run folder (a path to its ``model.pt`` is accepted too). Needs
    ``metrics.json`` and the card (``model.pt.card.json`` or the one embedded in ``model.pt``);
    every other part is optional and left out when absent. Raises ``EdgedermError`` (one line)
    when a required file is missing or a file present is unreadable.

    The root folder of a multi-seed run (``seeds.json``, no ``metrics.json``) gets a seeds report:
    mean ± SD over seeds and links to each seed's report.
    """
    run = Path(run_dir)
    if run.is_file():
        run = run.parent
    if not run.is_dir():
        raise EdgedermError(f"run folder not found: {run}")
    metrics_path = run / "metrics.json"
    if not metrics_path.exists() and (run / "seeds.json").exists():
        return _write_seeds_report(run)
    if not metrics_path.exists():
        raise EdgedermError(f"{run}: no metrics.json (not a finished training run?)")
    card = _read_card(run)
    metrics = _read_json(metrics_path, "metrics.json")
    if not isinstance(metrics, dict):
        raise EdgedermError(f"{metrics_path}: expected a JSON object with 'val' and 'test'")
    summaries = {s: metrics[s] for s in SPLITS if isinstance(metrics.get(s), dict)}
    if not summaries:
        raise EdgedermError(f"{metrics_path}: has neither 'val' nor 'test' results")
    classes = [str(c) for c in card["classes"]]
    decision = card.get("decision") or {"rule": "argmax"}
    plots = run / "plots"
    notes: list[str] = []
    figures: dict[str, list[tuple[str, Path]]] = {}

    # Read everything before drawing anything: a bad file fails the report before any plot of
    # it is (re)written.
    preds = {s: load_predictions(run / "predictions" / f"{s}.npz", classes, decision)
             for s in SPLITS if (run / "predictions" / f"{s}.npz").exists()}
    history = _read_history(run, card)
    cam_path = run / "cam_in_mask.json"
    cam = _read_json(cam_path, "cam_in_mask.json") if cam_path.exists() else None
    for split, pred in preds.items():
        notes += _check_predictions(split, pred, summaries.get(split), decision)
        label = "test" if split == "test" else "validation"
        figures[split] = [
            ("confusion matrix", plot_confusion(pred.y_true, pred.y_pred, classes, plots / f"confusion_{split}.png",
                                                title=f"confusion matrix, {label} (N={len(pred.y_true)})")),
            ("ROC", plot_roc(pred.y_true, pred.probs, classes, plots / f"roc_{split}.png",
                             title=f"ROC one-vs-rest, {label} (N={len(pred.y_true)})")),
            ("reliability", plot_reliability(pred.y_true, pred.probs, plots / f"reliability_{split}.png",
                                             n_bins=ECE_BINS, title=f"reliability, {label}")),
        ]
    if any(history.values()):
        figures["training"] = [("training curves", plot_training_curves(history, plots / "training_curves.png"))]

    for n in notes:
        log.warning("report %s: %s", run.name, n)
    text = _render(run, card, metrics, summaries, decision, history, figures, cam, notes)
    out = run / "report.md"
    write_text_atomic(out, text)
    log.info("report written: %s", out)
    return out


def _write_seeds_report(run: Path) -> Path:
    """The report of a multi-seed run's root folder (``seeds.json`` + one run folder per seed)."""
    path = run / "seeds.json"
    data = _read_json(path, "seeds.json")
    runs = data.get("runs") if isinstance(data, Mapping) else None
    if not isinstance(runs, list) or not runs or not all(isinstance(r, Mapping) for r in runs):
        raise EdgedermError(f"{path}: expected per-seed results under 'runs'")
    md = [f"# Multi-seed report: {run.name}", "", _seeds_section(runs) or "", "", "## Runs", ""]
    for r in runs:
        sub = run / Path(str(r.get("run") or f"seed-{r.get('seed')}")).name
        link = f"[{sub.name}]({sub.name}/report.md)" if (sub / "report.md").exists() else f"`{sub.name}`"
        md.append(f"- seed {r.get('seed', '?')}: {link}")
    out = run / "report.md"
    write_text_atomic(out, "\n".join(md) + "\n")
    log.info("report written: %s", out)
    return out


def _render(run: Path, card: Mapping[str, Any], metrics: Mapping[str, Any],
            summaries: Mapping[str, Mapping[str, Any]], decision: Mapping[str, Any],
            history: Mapping[str, list], figures: Mapping[str, list[tuple[str, Path]]],
            cam: Any, notes: list[str]) -> str:
    classes = [str(c) for c in card["classes"]]
    data = card.get("data") or {}
    prov = card.get("provenance") or {}
    model = card.get("model") or {}
    md: list[str] = [f"# Training report: {card.get('name') or run.name}", ""]
    if notes:
        md += ["> **Warning — the run folder is inconsistent:**"] + [f"> - {n}" for n in notes] + [""]

    rows: list[tuple[str, str]] = [("run folder", f"`{run.name}`")]
    if data.get("dataset"):
        fp = f" (fingerprint `{data['fingerprint']}`)" if data.get("fingerprint") else ""
        rows.append(("data set", f"{data['dataset']}{fp}"))
    counts = data.get("counts") or {s: summaries[s].get("n") for s in summaries if summaries[s].get("n") is not None}
    if counts:
        split_txt = " · ".join(f"{k} {v}" for k, v in counts.items() if k != "folds") + " images"
        if counts.get("folds"):
            split_txt += f", {counts['folds']}-fold cross-validation"
        if data.get("split_sha256"):
            split_txt += f" (split.csv sha256 `{str(data['split_sha256'])[:12]}`)"
        rows.append(("split", split_txt))
    if data.get("skipped") is not None:
        rows.append(("unreadable images skipped", str(data["skipped"])))
    rows.append(("classes", (f"{card['taxonomy']}: " if card.get("taxonomy") else "") + ", ".join(classes)))
    members = model.get("members") or []
    default_size = (card.get("preprocessing") or {}).get("input_size")
    sizes = []
    for m in members:
        size = _member_size(m, default_size)
        sizes += [size] if size and size not in sizes else []
    rows.append(("model", f"{model.get('kind', 'single')}: " + ", ".join(str(m.get("name")) for m in members)
                 + (f"; input {', '.join(sizes)}" if sizes else "")))
    views = (card.get("tta") or {}).get("views") or []
    if views:
        rows.append(("TTA views", f"{len(views)}: " + ", ".join(views)))
    training = model.get("training")
    if isinstance(training, Mapping) and training:
        rows.append(("training", ", ".join(f"{k} {v}" for k, v in training.items() if v is not None)))
    rows.append(("decision rule", f"`{decision.get('rule', 'argmax')}`"))
    if metrics.get("train_seconds") is not None:
        ws = metrics.get("world_size")
        on = f" on {ws} processes" if isinstance(ws, int) and ws > 1 else ""
        rows.append(("training time", _duration(metrics["train_seconds"]) + on))
    if prov:
        version = f"edgederm {prov.get('edgederm', '?')}"
        if prov.get("git_sha"):
            version += f", git `{str(prov['git_sha'])[:12]}`"
        if prov.get("torch"):
            version += f", torch {prov['torch']}"
        rows.append(("software", version))
        for key in ("created", "command"):
            if prov.get(key):
                rows.append((key, f"`{prov[key]}`" if key == "command" else str(prov[key])))
    md += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]

    split_notes = [f"- {s}: {summaries[s]['note']}" for s in summaries if summaries[s].get("note")]
    md += ["## Metrics", "",
           "Decision metrics use the card's decision rule; CIs are percentile bootstrap intervals "
           "resampling lesions, not images.", ""]
    md += (split_notes + [""] if split_notes else []) + [metrics_table(summaries), ""]
    split = "test" if "test" in summaries else next(iter(summaries))
    md += [f"## Per class ({split})", "", per_class_table(summaries[split], classes), ""]

    clinical = metrics.get("clinical") if isinstance(metrics.get("clinical"), Mapping) else None
    section = thresholds_section(decision, summaries, clinical)
    if section:
        md += ["## Clinical decision thresholds", "", section, ""]

    members_md = _members_table(card, history)
    if members_md:
        md += ["## Ensemble members" if len(members) > 1 else "## Model", "", members_md, ""]

    seeds = metrics.get("seeds")
    if isinstance(seeds, list):
        seeds_md = _seeds_section(seeds)
        if seeds_md:
            md += ["## Seeds", "", seeds_md, ""]

    split_csv = run / "split.csv"
    if split_csv.exists():
        table = _split_table(split_csv, classes)
        if table:
            md += ["## Data per class and split", "", "Images (lesions).", "", table, ""]

    def img(title: str, p: Path) -> str:
        return f"![{title}]({p.relative_to(run).as_posix()})"

    if figures:
        md += ["## Figures", ""]
        for key, heading in (("test", "Test"), ("val", "Validation"), ("training", "Training")):
            if key in figures:
                md += [f"### {heading}", ""] + [img(t, p) for t, p in figures[key]] + [""]

    gradcam = run / "gradcam.png"
    if gradcam.exists() or cam is not None:
        md += ["## Grad-CAM", ""]
        if gradcam.exists():
            md += [img("Grad-CAM", gradcam), ""]
        if cam is not None:
            md += [_cam_table(cam), ""]
    return "\n".join(md).rstrip() + "\n"
