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

The figure functions are reusable for export / gate / bench reports; so are the Markdown
builders ``metrics_table``, ``per_class_table`` and ``thresholds_section``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .decision import decide
from .errors import ClassMismatchError, DataError, EdgedermError
from .fsutil import atomic_path, write_text_atomic
from .metrics import ECE_BINS, classification_report, expected_calibration_error

log = logging.getLogger(__name__)

__all__ = [
    "Predictions",
    "best_epoch",
    "load_predictions",
    "metrics_table",
    "per_class_table",
    "plot_confusion",
    "plot_reliability",
    "plot_roc",
    "plot_training_curves",
    "thresholds_section",
    "write_run_report",
]

SPLITS = ("val", "test")
_DPI = 110
# Metric keys of a summary in report order, with the names a reader expects. Keys not listed
# here but present as scalars are appended under their own name.
_METRIC_LABELS: dict[str, str] = {
    "bacc": "BACC",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "macro_auc": "macro AUC",
    "top2": "top-2 accuracy",
    "top3": "top-3 accuracy",
    "mel_sensitivity": "melanoma sensitivity",
    "mel_specificity": "melanoma specificity",
    "malignant_bacc": "malignant BACC",
    "malignant_sensitivity": "malignant sensitivity (triage)",
    "malignant_specificity": "malignant specificity (triage)",
    "ece": f"ECE ({ECE_BINS} bins)",
}
# Non-metric keys of classification_report (counts, per-class dicts are handled separately).
_NOT_SCALAR_METRICS = {"n", "classes", "top1_ties", "confusion_matrix"}


# --------------------------------------------------------------------------------------------
# figures


def _figure(width: float, height: float) -> Any:
    """A Figure on the Agg canvas, without pyplot: no global state, no display, no leaks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        # No timestamps in the file: the same run gives the same bytes.
        meta = {"Software": None} if fmt == "png" else None
        fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata=meta)
    return path


def _labels(y: Any, name: str, n_classes: int, n: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D array of class indices, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise DataError(f"{name} has {len(arr)} entries but there are {n} images")
    if arr.dtype.kind not in "iub":
        raise DataError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.intp)
    if arr.min() < 0 or arr.max() >= n_classes:
        raise ClassMismatchError(f"{name} holds class indices outside 0..{n_classes - 1}")
    return arr


def _probs(probs: Any, n_classes: int | None = None) -> np.ndarray:
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("probs must be numeric (images × classes probabilities)") from None
    if p.ndim != 2 or p.shape[0] == 0:
        raise DataError(f"probs must be a non-empty 2-D array (images × classes), got shape {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ClassMismatchError(f"probs has {p.shape[1]} columns but there are {n_classes} classes")
    if not np.isfinite(p).all():
        raise DataError("probs contains NaN or infinite values")
    return p


def plot_confusion(
    y_true: Any,
    y_pred: Any,
    classes: Sequence[str],
    path: str | Path,
    normalize: bool = True,
    *,
    title: str | None = None,
) -> Path:
    """Confusion matrix (rows = truth, columns = decision), every cell annotated with its count.

    With ``normalize`` the colour is the row fraction (per-class recall on the diagonal), so rare
    classes are as visible as common ones; the fraction is printed under the count. A class with
    no true samples gets an empty row, marked ``n=0``.
    """
    names = [str(c) for c in classes]
    C = len(names)
    yt = _labels(y_true, "y_true", C)
    yp = _labels(y_pred, "y_pred", C, len(yt))
    cm = np.bincount(yt * C + yp, minlength=C * C).reshape(C, C)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(support[:, None] > 0, cm / support[:, None], 0.0)
    colour = frac if normalize else cm / max(int(cm.max()), 1)

    side = 2.0 + 0.75 * C
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(colour, cmap="Blues", vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of the true class" if normalize else "count / max count")
    fs = max(6.0, 11.0 - 0.4 * C)
    for i in range(C):
        for j in range(C):
            text = str(int(cm[i, j]))
            if normalize and support[i] > 0:
                text += f"\n{100 * frac[i, j]:.0f}%"
            ax.text(j, i, text, ha="center", va="center", fontsize=fs,
                    color="white" if colour[i, j] > 0.55 else "black")
    ax.set_xticks(range(C), names, rotation=45, ha="right")
    ax.set_yticks(range(C), [f"{c} (n={int(s)})" for c, s in zip(names, support)])
    ax.set_xlabel("decision")
    ax.set_ylabel("truth")
    ax.set_title(title or f"confusion matrix (N={len(yt)})")
    return _save(fig, path)


def plot_roc(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """One-vs-rest ROC curve per class plus the macro-average curve; AUCs in the legend.

    A class absent from ``y_true`` (or making up all of it) has no ROC: it is skipped and named in
    a note on the figure. The AUCs are ``edgederm.metrics``' (the same numbers as the report's
    tables); the macro curve averages the per-class TPRs on a common FPR grid and its legend shows
    the mean of the per-class AUCs, as ``macro_auc`` is defined.
    """
    from sklearn.metrics import roc_curve

    names = [str(c) for c in classes]
    C = len(names)
    p = _probs(probs, C)
    yt = _labels(y_true, "y_true", C, p.shape[0])
    support = np.bincount(yt, minlength=C)
    defined = [c for c in range(C) if 0 < support[c] < len(yt)]
    skipped = [names[c] for c in range(C) if c not in defined]

    fig = _figure(6.4, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    macro_label = None
    if defined:
        aucs = _aucs(yt, p, names)
        grid = np.linspace(0.0, 1.0, 201)
        tprs = []
        cmap = _colours(C)
        for c in defined:
            fpr, tpr, _ = roc_curve(yt == c, p[:, c])
            tprs.append(np.interp(grid, fpr, tpr))
            ax.plot(fpr, tpr, lw=1.3, color=cmap[c], label=f"{names[c]} (AUC {_num(aucs[names[c]])})")
        vals = [aucs[names[c]] for c in defined if aucs[names[c]] is not None]
        macro_label = f"macro (AUC {np.mean(vals):.3f})" if vals else "macro"
        ax.plot(grid, np.mean(tprs, axis=0), lw=2.4, color="black", ls="--", label=macro_label)
        ax.legend(loc="lower right", fontsize=8)
    if skipped:
        present = np.flatnonzero(support)
        note = (f"no ROC: y_true holds only {names[present[0]]}" if len(present) == 1
                else f"no ROC for {', '.join(skipped)} (no positives or no negatives in y_true)")
        ax.text(0.02, 0.98, note, transform=ax.transAxes, va="top", fontsize=8, color="firebrick", wrap=True)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title or f"ROC, one-vs-rest (N={len(yt)})")
    return _save(fig, path)


def _aucs(y_true: np.ndarray, probs: np.ndarray, names: list[str]) -> dict[str, float | None]:
    """Per-class AUCs from edgederm.metrics (probs renormalised: the report shows what the
    model output, but classification_report insists on rows summing to 1)."""
    p = np.clip(probs, 0.0, None)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    return classification_report(y_true, p, names)["auc"]


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_reliability(
    y_true: Any,
    probs: Any,
    path: str | Path,
    n_bins: int = 10,
    *,
    title: str | None = None,
) -> Path:
    """Reliability diagram of the top-1 confidence: accuracy vs confidence per bin, with ECE.

    Bins are ``edgederm.metrics``' (equal width, ``(b/n, (b+1)/n]``) and the ECE in the title is
    ``expected_calibration_error`` with the same ``n_bins``; pass ``n_bins=ECE_BINS`` to match
    the ECE of the metrics tables. The lower panel shows how many images fall in each bin.
    ``title`` is a prefix: the image count and the ECE are appended to it.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise EdgedermError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    p = _probs(probs)
    yt = _labels(y_true, "y_true", p.shape[1], p.shape[0])
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == yt).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
    pn = np.clip(p, 0.0, None)
    pn = pn / np.maximum(pn.sum(axis=1, keepdims=True), 1e-12)
    ece = expected_calibration_error(pn, yt, n_bins=n_bins)

    fig = _figure(5.6, 6.4)
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(gs[0])
    axh = fig.add_subplot(gs[1], sharex=ax)
    width = 1.0 / n_bins
    centres = edges[:-1] + width / 2
    has = count > 0
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    ax.bar(centres[has], acc[has], width=width * 0.95, color="tab:blue", alpha=0.8,
           edgecolor="navy", label="accuracy")
    # The gap between a bin's accuracy and its mean confidence is what ECE weighs.
    ax.bar(centres[has], (mean_conf - acc)[has], bottom=acc[has], width=width * 0.95,
           facecolor="none", hatch="///", edgecolor="firebrick", lw=0.8, label="gap to mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title or 'reliability'} (N={len(yt)}), ECE {ece:.3f} ({n_bins} bins)")
    ax.tick_params(labelbottom=False)
    axh.bar(centres, count, width=width * 0.95, color="grey")
    axh.set_xlabel("top-1 confidence")
    axh.set_ylabel("images")
    return _save(fig, path)


def _series(entries: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, e in enumerate(entries):
        v = e.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(float(e.get("epoch", i + 1)))
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def best_epoch(entries: Sequence[Mapping[str, Any]]) -> tuple[int, float] | None:
    """(epoch, val BACC) of the first epoch with the highest validation BACC (the trainer keeps
    the first best: it saves only on a strict improvement)."""
    ep, bacc = _series(entries, "val_bacc")
    ok = ~np.isnan(bacc)
    if not ok.any():
        return None
    i = int(np.flatnonzero(ok)[np.argmax(bacc[ok])])
    return int(ep[i]), float(bacc[i])


def plot_training_curves(history: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Training loss (and validation loss if logged) and validation BACC per epoch, one colour per
    member; each member's best validation-BACC epoch is starred. A third panel shows the learning
    rate when it was logged."""
    members = {str(k): list(v) for k, v in history.items() if v}
    if not members:
        raise EdgedermError("training history is empty: nothing to plot")
    for name, entries in members.items():
        if not all(isinstance(e, Mapping) for e in entries):
            raise DataError(f"history of {name!r} must be a list of per-epoch objects")
    has_lr = any(_series(v, "lr")[0].size for v in members.values())
    panels = 3 if has_lr else 2
    fig = _figure(4.6 * panels, 4.0)
    ax_loss = fig.add_subplot(1, panels, 1)
    ax_bacc = fig.add_subplot(1, panels, 2)
    ax_lr = fig.add_subplot(1, panels, 3) if has_lr else None
    colours = _colours(len(members))
    for colour, (name, entries) in zip(colours, members.items()):
        x, y = _series(entries, "loss")
        if x.size:
            ax_loss.plot(x, y, color=colour, marker=".", label=f"{name} train")
        x, y = _series(entries, "val_loss")
        if x.size:
            ax_loss.plot(x, y, color=colour, ls="--", marker=".", label=f"{name} val")
        x, y = _series(entries, "val_bacc")
        if x.size:
            ax_bacc.plot(x, y, color=colour, marker=".", label=name)
            best = best_epoch(entries)
            if best is not None:
                ax_bacc.plot([best[0]], [best[1]], marker="*", ms=15, color=colour,
                             markeredgecolor="black", ls="none",
                             label=f"{name} best: epoch {best[0]} ({best[1]:.3f})")
        if ax_lr is not None:
            x, y = _series(entries, "lr")
            if x.size:
                ax_lr.plot(x, y, color=colour, label=name)
    ax_loss.set_title("loss")
    ax_bacc.set_title("validation BACC")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_bacc, ax_lr):
        if ax is None:
            continue
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if ax_lr is not None:
        ax_lr.set_title("learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.subplots_adjust(wspace=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# reading a run folder


@dataclass
class Predictions:
    """One split's saved predictions (``predictions/<split>.npz``)."""

    y_true: np.ndarray
    probs: np.ndarray
    y_pred: np.ndarray
    classes: list[str]
    image_ids: np.ndarray | None = None
    groups: np.ndarray | None = None


def load_predictions(path: str | Path, classes: Sequence[str] | None = None,
                     decision: Mapping[str, Any] | None = None) -> Predictions:
    """Read a predictions ``.npz``; its class list must equal ``classes`` when given.

    ``y_pred`` defaults to the card's ``decision`` rule (else argmax) when the file lacks it.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as a predictions .npz ({str(e).splitlines()[0][:160]})") from None
    for key in ("y_true", "probs"):
        if key not in data:
            raise DataError(f"{path}: missing array {key!r} (has: {', '.join(sorted(data)) or 'none'})")
    names = [str(c) for c in data["classes"]] if "classes" in data else None
    if names is None:
        if classes is None:
            raise DataError(f"{path}: no 'classes' array and no class list given")
        names = [str(c) for c in classes]
    elif classes is not None and names != [str(c) for c in classes]:
        raise ClassMismatchError(f"{path}: classes {names} differ from the card's {list(classes)}")
    C = len(names)
    probs = _probs(data["probs"], C)
    y_true = _labels(data["y_true"], f"{path.name} y_true", C, probs.shape[0])
    if "y_pred" in data:
        y_pred = _labels(data["y_pred"], f"{path.name} y_pred", C, len(y_true))
    else:
        y_pred = decide(probs, names, dict(decision or {"rule": "argmax"}))
    n = len(y_true)
    ids, groups = data.get("image_ids"), data.get("groups")
    for key, arr in (("image_ids", ids), ("groups", groups)):
        if arr is not None and len(arr) != n:
            raise DataError(f"{path}: {key} has {len(arr)} entries but there are {n} images")
    return Predictions(y_true, probs, y_pred, names, ids, groups)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EdgedermError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgedermError(f"{path}: cannot read {what} ({e})") from None


def _read_card(run_dir: Path) -> dict[str, Any]:
    from .card import ArtifactCard, load_card

    side = run_dir / "model.pt.card.json"
    if side.exists():
        card = ArtifactCard.from_json(side.read_text(encoding="utf-8"), source=str(side))
    elif (run_dir / "model.pt").exists():
        card = load_card(run_dir / "model.pt")
    else:
        raise EdgedermError(
            f"{run_dir}: no model.pt.card.json (not a finished training run?)"
        )
    return card.to_dict()


def _read_history(run_dir: Path, card: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    path = run_dir / "history.json"
    if path.exists():
        hist = _read_json(path, "the training history")
        if not isinstance(hist, dict) or not all(isinstance(v, list) for v in hist.values()):
            raise EdgedermError(f"{path}: expected {{member: [per-epoch objects]}}")
        return hist
    out = {}
    for i, m in enumerate(card.get("model", {}).get("members", [])):
        if m.get("history"):
            out[f"{i}-{m.get('name', 'member')}"] = m["history"]
    return out


def _member_history(history: Mapping[str, list], index: int, members: Sequence[Mapping[str, Any]]) -> list | None:
    """The history of the ``index``-th card member. The trainer keys it by its member folder,
    ``"<slot>-<model>"`` (``"/fold<k>"`` appended in k-fold runs); ``"<slot>"`` and the bare model
    name (when no other member has it) are accepted too."""
    m = members[index]
    name, slot, fold = str(m.get("name", "?")), m.get("slot", index), m.get("fold")
    key = f"{slot}-{name}" + (f"/fold{fold}" if fold is not None else "")
    for k in (key, str(slot) if fold is None else None):
        if k is not None and k in history:
            return history[k]
    if name in history and [str(x.get("name")) for x in members].count(name) == 1:
        return history[name]
    if len(members) == len(history) == 1:
        return next(iter(history.values()))
    return None


def _split_table(path: Path, classes: Sequence[str]) -> str | None:
    """Images (lesions) per class and split from split.csv."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            first = fh.readline()
            if not first.startswith("#"):
                fh.seek(0)
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        log.warning("report: %s unreadable, class table left out: %s", path, e)
        return None
    if not rows or not {"label", "split"} <= set(rows[0]):
        log.warning("report: %s lacks label/split columns, class table left out", path)
        return None
    images: Counter[tuple[str, str]] = Counter()
    lesions: dict[tuple[str, str], set[str]] = defaultdict(set)
    for i, r in enumerate(rows):
        key = (r["label"], r["split"])
        images[key] += 1
        lesions[key].add(r.get("group") or r.get("image_id") or f"row {i}")
    splits = [s for s in ("train", "val", "test") if any(k[1] == s for k in images)]
    splits += sorted({k[1] for k in images} - set(splits))
    labels = list(classes) + sorted({k[0] for k in images} - set(classes))
    lines = ["| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for c in labels:
        lines.append(f"| {c} | " + " | ".join(f"{images[(c, s)]} ({len(lesions[(c, s)])})" for s in splits) + " |")
    totals = []
    for s in splits:
        n_lesions = len(set().union(*(lesions[(c, s)] for c in labels)))
        totals.append(f"{sum(images[(c, s)] for c in labels)} ({n_lesions})")
    lines.append("| **all** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Markdown builders


def _num(x: Any, digits: int = 3) -> str:
    if x is None or isinstance(x, bool):
        return "n/a"
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(f) else f"{f:.{digits}f}"


def _ci_cell(entry: Any, digits: int = 3) -> str:
    """``0.912 (0.871–0.950)`` from a bootstrap entry, or the bare value."""
    if isinstance(entry, Mapping):
        v, lo, hi = entry.get("value"), entry.get("lo"), entry.get("hi")
        if lo is not None and hi is not None and v is not None:
            return f"{_num(v, digits)} ({_num(lo, digits)}–{_num(hi, digits)})"
        return _num(v, digits)
    return _num(entry, digits)


def _value(entry: Any) -> float | None:
    if isinstance(entry, Mapping):
        entry = entry.get("value")
    if entry is None or isinstance(entry, bool):
        return None
    try:
        f = float(entry)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _entry(summary: Mapping[str, Any], key: str) -> Any:
    """The CI entry of ``key`` if bootstrapped, else the point value, else None."""
    ci = summary.get("ci") or {}
    if key in ci:
        return ci[key]
    return (summary.get("metrics") or {}).get(key)


def _ci_level(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    levels = {float(e["level"]) for s in summaries.values() for e in (s.get("ci") or {}).values()
              if isinstance(e, Mapping) and "level" in e}
    level = levels.pop() if len(levels) == 1 else 0.95
    return f"{100 * level:g}%"


def metrics_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Side-by-side Markdown table of scalar metrics with CIs, one column per evaluation.

    ``summaries`` maps a column name (``val``, ``test``, ``int8 on test``…) to an
    ``EvalResult.summary()``-shaped dict. Metrics follow a clinical order; those a column lacks
    show ``—``. (``edgederm.metrics.format_metrics_table`` formats one evaluation per table; a
    report compares several, hence this.)
    """
    keys: list[str] = []
    for s in summaries.values():
        for k, v in {**(s.get("metrics") or {}), **(s.get("ci") or {})}.items():
            scalar = isinstance(v, Mapping) and "value" in v or v is None or (
                isinstance(v, (int, float)) and not isinstance(v, bool))
            if scalar and "/" not in k and k not in _NOT_SCALAR_METRICS and k not in keys:
                keys.append(k)
    ordered = [k for k in _METRIC_LABELS if k in keys] + [k for k in keys if k not in _METRIC_LABELS]
    cols = list(summaries)
    level = _ci_level(summaries)
    head = [f"{c} (n={summaries[c].get('n', '?')})" for c in cols]
    lines = [f"| metric ({level} CI) | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    for k in ordered:
        cells = []
        for c in cols:
            s = summaries[c]
            present = k in (s.get("ci") or {}) or k in (s.get("metrics") or {})
            cells.append(_ci_cell(_entry(s, k)) if present else "—")
        lines.append(f"| {_METRIC_LABELS.get(k, k)} | " + " | ".join(cells) + " |")
    extra = []
    for label, key in (("skipped images", "skipped"),):
        if any(key in s for s in summaries.values()):
            extra.append(f"| {label} | " + " | ".join(str(summaries[c].get(key, "—")) for c in cols) + " |")
    ties = [(s.get("metrics") or {}).get("top1_ties") for s in summaries.values()]
    if any(t for t in ties):
        cells = " | ".join("—" if t is None else str(t) for t in ties)
        extra.append(f"| top-1 ties (argmax ambiguous) | {cells} |")
    return "\n".join(lines + extra)


def per_class_table(summary: Mapping[str, Any], classes: Sequence[str] | None = None) -> str:
    """Per-class Markdown table: support, sensitivity, specificity (with CIs when bootstrapped),
    precision, F1, AUC (with CI)."""
    m = summary.get("metrics") or {}
    ci = summary.get("ci") or {}
    names = list(classes or m.get("classes") or m.get("support", {}).keys())

    def cell(metric: str, c: str) -> str:
        key = f"{metric}/{c}"
        if key in ci:
            return _ci_cell(ci[key])
        return _num((m.get(metric) or {}).get(c))

    lines = ["| class | support | sensitivity | specificity | precision | F1 | AUC |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in names:
        support = (m.get("support") or {}).get(c)
        lines.append(
            f"| {c} | {'n/a' if support is None else support} | {cell('sensitivity', c)} | "
            f"{cell('specificity', c)} | {_num((m.get('precision') or {}).get(c))} | "
            f"{_num((m.get('f1') or {}).get(c))} | {cell('auc', c)} |"
        )
    return "\n".join(lines)


def _target_floors(decision: Mapping[str, Any], clinical_entry: Mapping[str, Any] | None,
                   cls: str) -> tuple[float | None, float | None]:
    """(min sensitivity, min specificity) of ``cls``: from ``clinical_report``'s entry, else the
    card's ``decision["targets"]`` (``{cls: {"min_sens", "min_spec"}}`` or a bare min_sens)."""
    for src in (clinical_entry, (decision.get("targets") or {}).get(cls)):
        if isinstance(src, Mapping) and ("min_sens" in src or "min_spec" in src):
            return _value(src.get("min_sens")), _value(src.get("min_spec"))
        if src is not None and not isinstance(src, Mapping):
            return _value(src), None
    return None, None


def _meets(sens: Any, spec: Any, t_sens: float | None, t_spec: float | None, key: str) -> bool | None:
    """Whether ``key`` (``"value"`` or ``"lo"``) of both entries reaches the floors."""
    if t_sens is None and t_spec is None:
        return None
    out = True
    for entry, floor in ((sens, t_sens), (spec, t_spec)):
        if floor is None:
            continue
        v = entry.get(key) if isinstance(entry, Mapping) else (entry if key == "value" else None)
        v = _value(v)
        if v is None:
            return None
        out = out and v >= floor - 1e-9
    return out


def _verdict(met: bool | None, met_lo: bool | None, has_target: bool) -> str:
    if not has_target:
        return "—"
    if met is None:
        return "n/a"
    if not met:
        return "**not met**"
    return "met (not at CI lower bound)" if met_lo is False else "met"


def _clinical_row(decision: Mapping[str, Any], summary: Mapping[str, Any] | None,
                  clinical: Mapping[str, Any] | None, cls: str) -> dict[str, Any]:
    """One class on one split: sens / spec entries, floors, verdicts — from ``clinical_report``
    output when there is one, else from the split's bootstrap of the rule's decisions."""
    t = ((clinical or {}).get("targets") or {}).get(cls)
    if isinstance(t, Mapping):
        sens, spec = t.get("sens"), t.get("spec")
        t_sens, t_spec = _target_floors(decision, t, cls)
        met, met_lo = t.get("met"), t.get("met_at_lower_bound")
        argmax = (t.get("sens_argmax"), t.get("spec_argmax"))
    else:
        s = summary or {}
        sens, spec = _entry(s, f"sensitivity/{cls}"), _entry(s, f"specificity/{cls}")
        if sens is None:
            sens = ((s.get("metrics") or {}).get("sensitivity") or {}).get(cls)
            spec = ((s.get("metrics") or {}).get("specificity") or {}).get(cls)
        t_sens, t_spec = _target_floors(decision, None, cls)
        met, met_lo = _meets(sens, spec, t_sens, t_spec, "value"), _meets(sens, spec, t_sens, t_spec, "lo")
        argmax = (None, None)
    has_target = t_sens is not None or t_spec is not None
    return {"sens": sens, "spec": spec, "floors": (t_sens, t_spec),
            "verdict": _verdict(met, met_lo, has_target), "argmax": argmax,
            "fallback": t.get("fallback") if isinstance(t, Mapping) else None}


def thresholds_section(
    decision: Mapping[str, Any],
    summaries: Mapping[str, Mapping[str, Any]],
    clinical: Mapping[str, Mapping[str, Any]] | None = None,
) -> str | None:
    """The clinical decision thresholds section, or None for a plain argmax model.

    Shown when the decision has thresholds or records a calibration (``targets`` /
    ``fallback``, as ``edgederm.thresholds.calibrate`` writes them: a calibration whose every
    class fell back to argmax is reported too) or when ``clinical`` (per split, the output of
    ``edgederm.thresholds.clinical_report``) is given. Per target class: priority, threshold,
    fallback level, floors, and per split the sensitivity / specificity of the multi-class rule
    with CIs and whether the floors were met — from ``clinical`` when given, else from the
    summaries' bootstrap (computed on the rule's decisions, so the same quantity).
    """
    thresholds = dict(decision.get("thresholds") or {})
    fallback = decision.get("fallback")
    fallback_map = dict(fallback) if isinstance(fallback, Mapping) else {}
    calibrated = bool(decision.get("targets")) or fallback is not None or "fallback_fired" in decision
    if not thresholds and not calibrated and not clinical:
        return None
    priority = [c for c in (decision.get("priority") or list(thresholds)) if c in thresholds]
    priority += [c for c in thresholds if c not in priority]
    order = list(priority)
    for src in [decision.get("targets") or {}, fallback_map] + [
        (c or {}).get("targets") or {} for c in (clinical or {}).values()
    ]:
        order += [c for c in src if c not in order]
    cols = list(summaries)
    level = _ci_level(summaries)

    if thresholds:
        rule = (f"Rule: `{decision.get('rule', 'priority_thresholds')}`, priority {' → '.join(priority)}: "
                "the first class in that order whose probability reaches its threshold is the "
                "decision, otherwise argmax.")
    else:
        rule = f"Rule: `{decision.get('rule', 'argmax')}` — no class kept a threshold."
    out = [
        f"{rule} Sensitivity / specificity are of the decision under this rule, multi-class "
        f"(a melanoma called BCC is a melanoma miss), with {level} CIs over lesions.",
        "",
    ]
    cal = decision.get("calibrated_on")
    if isinstance(cal, Mapping):
        extra = [f"{k}: {v}" for k, v in cal.items()
                 if k not in ("split", "n", "achieved", "bacc", "bacc_argmax") and not isinstance(v, (Mapping, list))]
        crit = f"; criterion `{decision['criterion']}`" if decision.get("criterion") else ""
        out += [f"Thresholds calibrated on {cal.get('split', 'validation')} (n={cal.get('n', '?')}"
                + (f"; {'; '.join(extra)}" if extra else "") + f"){crit}; test never seen by the calibration.", ""]
    fired = decision.get("fallback_fired", None if fallback_map else fallback)
    if "fallback_fired" in decision or fallback is not None:
        if fired in (None, False, "", "none", "strict"):
            out += ["Fallback: none fired — every target class met its strict floors on validation.", ""]
        elif fired == "argmax":
            out += ["Fallback fired: **argmax** — for at least one class no threshold met even the "
                    "relaxed floors; that class is decided by argmax.", ""]
        else:
            out += [f"Fallback fired: **{fired}** — at least one class uses relaxed floors "
                    "(level per class below).", ""]
    if decision.get("skipped"):
        out += [f"Targets skipped (not classes of this model): {', '.join(map(str, decision['skipped']))}.", ""]

    head = ["class", "priority", "threshold", "level", "target"]
    align = ["---", "---:", "---:", ":---:", ":---:"]
    for c in cols:
        head += [f"{c} sensitivity", f"{c} specificity", f"{c}: floors met"]
        align += ["---:", "---:", ":---:"]
    # What the thresholds change: the same class's numbers under plain argmax (clinical_report).
    show_argmax = "test" in cols and bool(((clinical or {}).get("test") or {}).get("targets"))
    if show_argmax:
        head.append("test sens / spec with argmax")
        align.append("---:")
    out += ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for cls in order:
        rows = {c: _clinical_row(decision, summaries.get(c), (clinical or {}).get(c), cls) for c in cols}
        first = next(iter(rows.values()), None)
        t_sens, t_spec = first["floors"] if first else (None, None)
        target = ", ".join(x for x in (
            f"sens ≥ {t_sens:.2f}" if t_sens is not None else "",
            f"spec ≥ {t_spec:.2f}" if t_spec is not None else "") if x) or "—"
        lvl = fallback_map.get(cls) or next((r["fallback"] for r in rows.values() if r["fallback"]), None)
        # A relaxed level: show the floors it settled for (recorded by the calibration).
        used = ((cal.get("achieved") or {}).get(cls) or {}) if isinstance(cal, Mapping) else {}
        if lvl not in (None, "strict", "argmax") and used.get("min_sens") is not None:
            lvl = f"{lvl} (sens ≥ {_num(used['min_sens'], 2)}, spec ≥ {_num(used.get('min_spec'), 2)})"
        row = [cls, str(priority.index(cls) + 1) if cls in priority else "—",
               _num(thresholds[cls], 4) if cls in thresholds else "— (argmax)", str(lvl or "—"), target]
        for c in cols:
            r = rows[c]
            row += [_ci_cell(r["sens"]), _ci_cell(r["spec"]), r["verdict"]]
        if show_argmax:
            a_sens, a_spec = rows["test"]["argmax"]
            row.append(f"{_num(a_sens)} / {_num(a_spec)}")
        out.append("| " + " | ".join(row) + " |")

    baccs = []
    for c in cols:
        b = ((clinical or {}).get(c) or {}).get("bacc")
        if isinstance(b, Mapping) and "rule" in b and "argmax" in b:
            d = b.get("diff") or {}
            diff = f"{_value(d.get('diff')):+.3f}" if _value(d.get("diff")) is not None else "n/a"
            if d.get("lo") is not None and d.get("hi") is not None:
                diff += f" ({_num(d['lo'])} to {_num(d['hi'])})"  # "–" reads badly next to a minus
            baccs.append(f"{c}: {_ci_cell(b['rule'])} with the rule vs {_ci_cell(b['argmax'])} with argmax, "
                         f"difference {diff}")
    if baccs:
        out += ["", "BACC — " + "; ".join(baccs) + "."]
    return "\n".join(out)


def _seed_scalars(entry: Mapping[str, Any], split: str) -> dict[str, float]:
    """Scalar metrics of one seed's entry for ``split``. Accepted: ``{"seed", "val": X, "test":
    X}`` where X is a summary (``{"metrics", "ci"}``) or a flat ``{metric: value}`` dict (the
    trainer's ``seeds.json`` runs), or a bare summary / flat dict (counted as test)."""
    if isinstance(entry.get(split), Mapping):
        s = entry[split]
    elif split == "test" and not any(isinstance(entry.get(k), Mapping) for k in SPLITS):
        s = entry
    else:
        return {}
    if "metrics" in s or "ci" in s:
        m = dict(s.get("metrics") or {})
        for k, v in (s.get("ci") or {}).items():
            m.setdefault(k, v)
    else:
        m = dict(s)
    out = {}
    for k, v in m.items():
        if k in _NOT_SCALAR_METRICS or k in ("seed", "run") or "/" in k:
            continue
        val = _value(v)
        if val is not None:
            out[k] = val
    return out


def _seeds_section(seeds: Sequence[Mapping[str, Any]]) -> str | None:
    seeds = [s for s in seeds if isinstance(s, Mapping)]
    if not seeds:
        return None
    per_split = {sp: [_seed_scalars(s, sp) for s in seeds] for sp in SPLITS}
    keys = []
    for sp in SPLITS:
        for d in per_split[sp]:
            keys += [k for k in d if k not in keys]
    keys = [k for k in _METRIC_LABELS if k in keys] + [k for k in keys if k not in _METRIC_LABELS]
    labels = [str(s.get("seed", i)) for i, s in enumerate(seeds)]
    splits = [sp for sp in SPLITS if any(per_split[sp])]
    lines = [f"{len(seeds)} seeds ({', '.join(labels)}); mean ± sample SD over seeds.", ""]
    head = ["metric"] + [f"{sp} mean ± SD" for sp in splits] + [f"test, seed {x}" for x in labels if "test" in splits]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for k in keys:
        row = [_METRIC_LABELS.get(k, k)]
        for sp in splits:
            vals = [d[k] for d in per_split[sp] if k in d]
            if not vals:
                row.append("—")
            elif len(vals) == 1:
                row.append(f"{vals[0]:.3f} (1 seed)")
            else:
                row.append(f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}")
        if "test" in splits:
            row += [_num(d.get(k)) for d in per_split["test"]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _members_table(card: Mapping[str, Any], history: Mapping[str, list]) -> str | None:
    model = card.get("model") or {}
    members = model.get("members") or []
    if not members:
        return None
    default_size = (card.get("preprocessing") or {}).get("input_size")
    # Columns the trainer fills only in some runs (k-fold, pretrained init, focal loss).
    optional = [(k, label) for k, label in (("fold", "fold"), ("init", "init"), ("loss", "loss"))
                if any(k in m for m in members)]
    head = ["#", "model"] + [label for _, label in optional] + [
        "input", "val BACC", "weight", "best epoch", "epochs", "train time"]
    lines = ["| " + " | ".join(head) + " |",
             "|---:|---|" + "---|" * len(optional) + "---:|" * 6]
    for i, m in enumerate(members):
        entries = _member_history(history, i, members) or m.get("history") or []
        best = m.get("best_epoch")
        if best is None and entries:
            b = best_epoch(entries)
            best = b[0] if b else None
        secs = [float(e["seconds"]) for e in entries if isinstance(e.get("seconds"), (int, float))]
        cells = [str(i), f"`{m.get('name', '?')}`"] + [str(m.get(k, "—")) for k, _ in optional] + [
            _member_size(m, default_size) or "n/a", _num(m.get("val_bacc")), _num(m.get("weight")),
            str(best) if best is not None else "n/a", str(len(entries)) if entries else "n/a",
            _duration(sum(secs)) if secs else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    kind = model.get("kind", "single")
    note = kind + (f", combined by `{model['combine']}`" if kind == "ensemble" and model.get("combine") else "")
    return note + ".\n\n" + "\n".join(lines)


def _member_size(member: Mapping[str, Any], default: Any) -> str | None:
    size = member.get("input_size") or (member.get("preprocessing") or {}).get("input_size") or default
    return "×".join(str(x) for x in size) if size else None


def _duration(seconds: Any) -> str:
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _flat_rows(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            rows += _flat_rows(v, f"{prefix}{k}" if not prefix else f"{prefix}/{k}")
    elif isinstance(obj, list):
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in obj) and obj:
            arr = np.asarray(obj, dtype=float)
            rows.append((prefix, f"mean {arr.mean():.3f} over {len(arr)}"))
        else:
            rows.append((prefix, f"{len(obj)} entries"))
    elif isinstance(obj, float):
        rows.append((prefix, _num(obj)))
    else:
        rows.append((prefix, str(obj)))
    return rows


def _cam_table(cam: Any) -> str:
    """``cam_in_mask.json`` (``edgederm.explain.cam_in_mask_report``): per member, the share of
    Grad-CAM energy inside the lesion mask against chance (the mask's area share)."""
    members = cam.get("members") if isinstance(cam, Mapping) else None
    if not isinstance(members, list) or not all(isinstance(m, Mapping) for m in members):
        return "| | |\n|---|---:|\n" + "\n".join(f"| {k} | {v} |" for k, v in _flat_rows(cam))

    def stat(e: Any) -> str:
        if not isinstance(e, Mapping):
            return _num(e)
        return _ci_cell({"value": e.get("mean"), "lo": e.get("lo"), "hi": e.get("hi")})

    level = cam.get("level") if isinstance(cam.get("level"), (int, float)) else 0.95
    head = (f"Grad-CAM energy inside the lesion mask on {cam.get('dataset', 'the masked images')} "
            f"({cam.get('n_images', '?')} images; explained class: {cam.get('explained', 'decision')}); "
            f"chance = the mask's share of the image. Means with {100 * float(level):g}% bootstrap CIs over images.")
    lines = [head, "", "| member | energy in mask | chance | excess over chance | ratio to chance |",
             "|---|---:|---:|---:|---:|"]
    for m in members:
        lines.append(f"| `{m.get('name', '?')}` | {stat(m.get('energy_in_mask'))} | "
                     f"{stat(m.get('mask_area_fraction'))} | {stat(m.get('excess_over_chance'))} | "
                     f"{_num(m.get('ratio_to_chance'), 2)} |")
    return "\n".join(lines)


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
