"""Figures of a run: confusion matrix, one-vs-rest ROC, reliability diagram, training curves.

Drawn on the Agg canvas without pyplot (no global state, no display) and saved atomically with no
timestamps, so the same data give the same bytes. AUC / ECE come from ``edgederm.metrics`` so a
figure and the table next to it agree. ``figure``, ``save_figure`` and ``colours`` are shared with
the bench report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ClassMismatchError, DataError, EdgedermError
from ..fsutil import atomic_path
from ..metrics import classification_report, expected_calibration_error
from ..metrics import format_number as _num

__all__ = [
    "best_epoch",
    "colours",
    "figure",
    "plot_confusion",
    "plot_reliability",
    "plot_roc",
    "plot_training_curves",
    "save_figure",
]

_DPI = 110


def figure(width: float, height: float) -> Any:
    """A Figure on the Agg canvas, without pyplot: no global state, no display, no leaks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` atomically, format from the suffix (PNG by default), without timestamps."""
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
    fig = figure(side + 1.2, side)
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
    return save_figure(fig, path)


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

    fig = figure(6.4, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    macro_label = None
    if defined:
        aucs = _aucs(yt, p, names)
        grid = np.linspace(0.0, 1.0, 201)
        tprs = []
        cmap = colours(C)
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
    return save_figure(fig, path)


def _aucs(y_true: np.ndarray, probs: np.ndarray, names: list[str]) -> dict[str, float | None]:
    """Per-class AUCs from edgederm.metrics (probs renormalised: the report shows what the
    model output, but classification_report insists on rows summing to 1)."""
    p = np.clip(probs, 0.0, None)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    return classification_report(y_true, p, names)["auc"]


def colours(n: int) -> list[Any]:
    """``n`` distinct colours (tab10, tab20 beyond ten)."""
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

    fig = figure(5.6, 6.4)
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
    return save_figure(fig, path)


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
    fig = figure(4.6 * panels, 4.0)
    ax_loss = fig.add_subplot(1, panels, 1)
    ax_bacc = fig.add_subplot(1, panels, 2)
    ax_lr = fig.add_subplot(1, panels, 3) if has_lr else None
    palette = colours(len(members))
    for colour, (name, entries) in zip(palette, members.items()):
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
    return save_figure(fig, path)
