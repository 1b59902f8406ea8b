"""Clinical classification metrics, lesion-level bootstrap CIs and paired model comparison.

Every number edgederm reports (training reports, the export accuracy gate, the bench) comes from
this module. Inputs are ``y_true`` (N class indices), ``probs`` (N×C softmax probabilities, rows
sum to 1), ``classes`` (C names in model-output order), an optional decision ``y_pred`` (N class
indices, e.g. after clinical thresholds; default: argmax of ``probs``) and, for the bootstrap,
``groups`` (N lesion ids: the unit of resampling).

Conventions (tests pin each of them):

* **Decision metrics** (accuracy, BACC, F1, sensitivity, specificity, precision, confusion matrix)
  use ``y_pred``; **score metrics** (AUC, top-k, ECE) use ``probs``.
* **BACC** is the mean recall over the classes *present in y_true*; absent classes are left out
  rather than counted as 0. This is the convention of the official ISIC scorer
  (``isic-challenge-scoring``: its 0/0 recalls are NaN and pandas' mean skips them) and of
  ``sklearn.metrics.balanced_accuracy_score``. One difference remains: on an exact tie for the top
  probability, ``argmax`` takes the first class while the ISIC scorer counts the image as
  "undecided" (wrong). ``top1_ties`` in the report counts such images (quantised models produce
  them); with none, our BACC equals the scorer's.
* **macro F1** averages over the classes that occur in ``y_true`` or ``y_pred`` (sklearn's default
  label set); a class predicted but never true has F1 = 0.
* **AUC** is one-vs-rest, rank based with mid-ranks for ties (identical to
  ``sklearn.metrics.roc_auc_score``); a class with no positives or no negatives has no AUC.
  ``macro_auc`` averages the defined ones.
* **top-k** (k = 2, 3 where k < C) ranks tied scores as ``sklearn.metrics.top_k_accuracy_score``
  does (among equal scores the higher class index ranks first).
* **malignant_bacc** is the mean recall of the malignant classes present in ``y_true`` (HAM7: MEL,
  BCC, AKIEC) — the multi-class BACC restricted to malignant rows, so a melanoma called BCC is a
  miss. **malignant_sensitivity / malignant_specificity** are the triage view: truth in the
  malignant set vs decision in the malignant set (a melanoma called BCC counts as caught).
* **mel_sensitivity / mel_specificity** are melanoma-vs-rest for the decision ``y_pred``.
* Class names given in ``melanoma`` / ``malignant`` are matched case-insensitively; names that are
  not classes are skipped, and keys whose classes are all missing are left out. The defaults cover
  the edgederm taxonomies (HAM7, ISIC 2019, PH2's ``melanoma``, binary ``malignant``).
* **ECE**: top-1 confidence (max prob) against argmax correctness, 15 equal-width bins, bin ``b``
  holding confidences in ``(b/15, (b+1)/15]`` (zero in the first bin), weighted by bin size.
* An undefined value (0/0) is ``None`` in returned dicts, so they serialise as strict JSON.
* **Bootstrap**: lesions (``groups``) are resampled, percentile intervals. Which classes a macro
  average (BACC, macro F1, macro AUC, malignant BACC) covers is fixed by the data as given; a
  resample lacking one of them is skipped for that metric (as is one with no melanoma drawn for
  ``mel_sensitivity``), never averaged over fewer classes. ``n_used`` reports how many counted.

Speed: every metric here is a function of per-image counts, so the bootstrap computes per-*group*
sufficient statistics once (confusion counts, top-k hits, ECE bin sums, group sizes) and gets all
resamples at once as ``W @ stats`` where ``W`` (resamples × groups) holds how often each lesion was
drawn. AUCs reuse one sort per class: resampling changes the weights of the images, never their
order, so a weighted Mann-Whitney sum over precomputed tie blocks gives each resample's AUC.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from edgederm.errors import ClassMismatchError, DataError, EdgedermError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MALIGNANT",
    "DEFAULT_MELANOMA",
    "ECE_BINS",
    "bootstrap_ci",
    "classification_report",
    "expected_calibration_error",
    "format_ci",
    "format_ci_entry",
    "format_metrics_table",
    "format_number",
    "mcnemar",
    "metric_names",
    "operating_point",
    "paired_bootstrap",
]

ECE_BINS = 15
# Malignant class names across the edgederm taxonomies (HAM7; ISIC 2019's AK/SCC; PH2; binary).
# Names that are not in a task's class list are ignored, so one default serves every task.
DEFAULT_MALIGNANT: tuple[str, ...] = ("MEL", "BCC", "AKIEC", "AK", "SCC", "melanoma", "malignant")
# Candidate names of the melanoma class; the first one found in the class list is used.
DEFAULT_MELANOMA: tuple[str, ...] = ("MEL", "melanoma")
# McNemar: exact binomial below this many discordant pairs, continuity-corrected chi-square above.
MCNEMAR_EXACT_BELOW = 25
# Rows of probs may deviate this much from summing to 1 (fp16 / int8 exports are not exact).
_PROB_SUM_TOL = 1e-2
# Elements per chunk of the bootstrap's (resamples × groups) draw counts and (resamples × tie
# blocks) AUC intermediates: 16 MB of float64 each.
_CHUNK_ELEMENTS = 2_000_000

_SCALAR_ORDER = (
    "bacc",
    "accuracy",
    "macro_f1",
    "top2",
    "top3",
    "macro_auc",
    "ece",
    "mel_sensitivity",
    "mel_specificity",
    "malignant_bacc",
    "malignant_sensitivity",
    "malignant_specificity",
)
_PER_CLASS = ("sensitivity", "specificity", "auc")


# --------------------------------------------------------------------------------------------
# input checking


def _check_classes(classes: Sequence[str]) -> list[str]:
    names = [str(c) for c in classes]
    if len(names) < 2:
        raise ClassMismatchError(f"need at least 2 classes, got {names}")
    if len(set(names)) != len(names):
        raise ClassMismatchError(f"class names must be unique, got {names}")
    return names


def _check_probs(probs: Any, n_classes: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise DataError(f"probs must be a 2-D array (images × classes), got shape {p.shape}")
    if p.shape[0] == 0:
        raise DataError("probs is empty: no images to score")
    if p.shape[1] != n_classes:
        raise ClassMismatchError(
            f"probs has {p.shape[1]} columns but {n_classes} classes were given"
        )
    if not np.isfinite(p).all():
        raise DataError("probs contains NaN or infinite values")
    dev = float(np.abs(p.sum(axis=1) - 1.0).max())
    if p.min() < -1e-6 or dev > _PROB_SUM_TOL:
        raise DataError(
            f"probs rows must be probabilities summing to 1 (max deviation {dev:.3g}, "
            f"min value {p.min():.3g}): apply softmax to logits first"
        )
    return p


def _check_labels(y: Any, name: str, n_classes: int, n: int | None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D (one class index per image), got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{name} is empty: no images to score")
    if n is not None and arr.shape[0] != n:
        raise DataError(f"{name} has {arr.shape[0]} entries but there are {n} images")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.intp)
    elif arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        arr = arr.astype(np.intp)
    elif arr.dtype.kind not in "iu":
        raise DataError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ClassMismatchError(
            f"{name} holds class index {bad}, outside 0..{n_classes - 1} for {n_classes} classes"
        )
    return arr.astype(np.intp, copy=False)


def _group_index(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Dense group ids 0..G-1; ``None`` makes every image its own group."""
    if groups is None:
        return np.arange(n, dtype=np.intp), n
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise DataError(f"groups must have one entry per image ({n}), got shape {g.shape}")
    if g.dtype == object:
        g = g.astype(str)
    _, inverse = np.unique(g, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.intp)
    return inverse, int(inverse.max()) + 1


def _find_class(classes: Sequence[str], names: str | Sequence[str] | None) -> int | None:
    if names is None:
        return None
    candidates = [names] if isinstance(names, str) else list(names)
    folded = [c.casefold() for c in classes]
    for name in candidates:
        if name.casefold() in folded:
            return folded.index(name.casefold())
    return None


def _find_classes(classes: Sequence[str], names: Sequence[str] | None) -> list[int]:
    if not names:
        return []
    if isinstance(names, str):
        names = [names]
    folded = [c.casefold() for c in classes]
    return sorted({folded.index(n.casefold()) for n in names if n.casefold() in folded})


def _ece_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # Bin b holds (b/n, (b+1)/n]; searchsorted on the inner edges with side="left" puts a value
    # equal to an edge into the lower bin, and 0 into bin 0.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], conf, side="left")


def _topk_hits(probs: np.ndarray, y_true: np.ndarray, k: int) -> np.ndarray:
    # sklearn sorts with a stable ascending sort and reverses, so among equal scores the higher
    # class index ranks first; rank = #strictly higher + #equal with a higher index.
    idx = np.arange(probs.shape[1])
    p_true = probs[np.arange(len(y_true)), y_true][:, None]
    above = (probs > p_true).sum(axis=1)
    tied_after = ((probs == p_true) & (idx[None, :] > y_true[:, None])).sum(axis=1)
    return (above + tied_after) < k


def _float_or_none(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


# --------------------------------------------------------------------------------------------
# the engine: per-group sufficient statistics, metrics for any group weighting


class _AucPrep:
    """One class's one-vs-rest AUC for any group weighting, from one sort of its scores.

    With image weights w (a resample's lesion counts),
    AUC = Σ_pos w_i·(Q_below_i + ½·Q_tied_i) / (P·Q), where Q_below is the weight of negatives
    scored strictly lower and Q_tied that of negatives with the same score (mid-rank ties, as
    sklearn). Resampling never reorders scores, so per tie block of positives three group-count
    vectors suffice: the positives in the block, the negatives between it and the previous
    positive block (their running sum is Q_below) and, for blocks with ties, the tied negatives.
    They form one sparse (rows × groups) matrix; a resample costs one sparse product with its
    draw counts. The smaller side plays the positive role (AUC = 1 − AUC with roles swapped) to
    keep the rows few.
    """

    def __init__(self, scores: np.ndarray, positive: np.ndarray, gidx: np.ndarray, n_groups: int):
        n_pos = int(positive.sum())
        self.defined = 0 < n_pos < len(positive)
        self.swap = n_pos > len(positive) - n_pos
        self.n_rows = 0
        if not self.defined:
            return
        order = np.argsort(scores, kind="stable")
        s = scores[order]
        block = np.cumsum(np.r_[False, s[1:] != s[:-1]])  # tie-block id in ascending score order
        role_pos = positive[order] != self.swap
        g = gidx[order]
        pos_blocks = np.unique(block[role_pos])
        nb = len(pos_blocks)
        j_pos = np.searchsorted(pos_blocks, block[role_pos])
        neg_block = block[~role_pos]
        g_neg = g[~role_pos]
        j_neg = np.searchsorted(pos_blocks, neg_block)  # first positive block at or above
        tied = (j_neg < nb) & (pos_blocks[np.minimum(j_neg, nb - 1)] == neg_block)
        # A negative tied with positive block j is strictly below blocks j+1..; others below j..
        j_below = j_neg + tied
        keep = j_below < nb
        # Rows: nb positive blocks, nb "new negatives below", then one per block with ties.
        self.tie_blocks, tie_row = np.unique(j_neg[tied], return_inverse=True)
        rows = np.concatenate([j_pos, nb + j_below[keep], 2 * nb + tie_row.reshape(-1)])
        cols = np.concatenate([g[role_pos], g_neg[keep], g_neg[tied]])
        self.nb = nb
        self.n_rows = 2 * nb + len(self.tie_blocks)
        self.M = sp.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(self.n_rows, n_groups)
        )  # duplicate (row, group) entries are summed: counts

    def auc(self, WT: np.ndarray, n: np.ndarray) -> np.ndarray:
        """AUC per resample; ``WT`` (G × R) holds the draw counts, ``n`` the images per resample.
        NaN = undefined (no positives or no negatives drawn)."""
        if not self.defined:
            return np.full(WT.shape[1], np.nan)
        nb = self.nb
        X = np.asarray(self.M @ WT)  # (n_rows × R)
        P, Q_new, T = X[:nb], X[nb : 2 * nb], X[2 * nb :]
        num = np.einsum("ij,ij->j", P, np.cumsum(Q_new, axis=0))
        if len(self.tie_blocks):
            num += 0.5 * np.einsum("ij,ij->j", P[self.tie_blocks], T)
        p_tot = P.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            auc = num / (p_tot * (n - p_tot))
        return 1.0 - auc if self.swap else auc


class _GroupStats:
    """Sufficient statistics per group, so that metrics of a weighting ``W`` (R × G) of the groups
    — R bootstrap resamples, or one row of ones for the data as given — are a few matmuls."""

    def __init__(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        probs: np.ndarray | None,
        classes: list[str],
        gidx: np.ndarray,
        n_groups: int,
        melanoma: str | Sequence[str] | None,
        malignant: Sequence[str] | None,
    ) -> None:
        C, G = len(classes), n_groups
        self.classes = classes
        self.n_groups = G
        self.has_probs = probs is not None
        self.size = np.bincount(gidx, minlength=G).astype(np.float64)
        self.cm_counts = (
            np.bincount(gidx * C * C + y_true * C + y_pred, minlength=G * C * C)
            .reshape(G, C * C)
            .astype(np.float64)
        )
        self.mel = _find_class(classes, melanoma)
        self.mal = _find_classes(classes, malignant)

        # Which classes enter the macro averages is fixed by the data as given; a resample that
        # lacks one of them cannot estimate the same quantity and is skipped for that metric.
        cm = self.cm_counts.sum(axis=0).reshape(C, C)
        support, predicted = cm.sum(axis=1), cm.sum(axis=0)
        self.present = np.flatnonzero(support > 0)
        self.f1_set = np.flatnonzero(support + predicted > 0)
        self.mal_present = np.array([i for i in self.mal if support[i] > 0], dtype=np.intp)
        # AUC of a class is defined when it has positives and negatives.
        self.auc_set = np.flatnonzero((support > 0) & (support < support.sum()))

        self.topk: dict[int, np.ndarray] = {}
        self.auc_prep: list[_AucPrep] = []
        if probs is not None:
            for k in (2, 3):
                if k < C:
                    hits = _topk_hits(probs, y_true, k).astype(np.float64)
                    self.topk[k] = np.bincount(gidx, weights=hits, minlength=G)
            top1 = probs.max(axis=1)
            correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
            bins = _ece_bins(top1, ECE_BINS)
            # ECE = sum_b |sum_{i in b}(correct_i - conf_i)| / N, so per-bin sums suffice.
            self.ece_sums = np.bincount(
                gidx * ECE_BINS + bins, weights=correct - top1, minlength=G * ECE_BINS
            ).reshape(G, ECE_BINS)
            self.auc_prep = [_AucPrep(probs[:, c], y_true == c, gidx, G) for c in range(C)]
        # Widest per-resample intermediate (for chunking): draw counts, or AUC block rows.
        self.work_width = max([G] + [prep.n_rows for prep in self.auc_prep])

    def metrics(self, W: np.ndarray, names: set[str] | None = None) -> dict[str, np.ndarray]:
        """All scalar metrics (or those in ``names``) for each row of ``W``; NaN = undefined."""
        C = len(self.classes)
        R = W.shape[0]
        n = W @ self.size
        cm = (W @ self.cm_counts).reshape(R, C, C)
        support, predicted = cm.sum(axis=2), cm.sum(axis=1)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        out: dict[str, np.ndarray] = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            sens = tp / support
            neg = n[:, None] - support
            spec = (neg - (predicted - tp)) / neg
            f1 = 2 * tp / (support + predicted)
            out["bacc"] = sens[:, self.present].mean(axis=1)
            out["accuracy"] = tp.sum(axis=1) / n
            out["macro_f1"] = f1[:, self.f1_set].mean(axis=1)
            for k, hits in self.topk.items():
                out[f"top{k}"] = (W @ hits) / n
            if self.has_probs:
                out["ece"] = np.abs(W @ self.ece_sums).sum(axis=1) / n
            if self.mel is not None:
                out["mel_sensitivity"] = sens[:, self.mel]
                out["mel_specificity"] = spec[:, self.mel]
            if self.mal:
                m = np.zeros(C, dtype=bool)
                m[self.mal] = True
                out["malignant_bacc"] = (
                    sens[:, self.mal_present].mean(axis=1)
                    if len(self.mal_present)
                    else np.full(R, np.nan)
                )
                pos_total = support[:, m].sum(axis=1)
                caught = cm[:, m][:, :, m].sum(axis=(1, 2))
                cleared = cm[:, ~m][:, :, ~m].sum(axis=(1, 2))
                out["malignant_sensitivity"] = caught / pos_total
                out["malignant_specificity"] = cleared / (n - pos_total)
            for i, c in enumerate(self.classes):
                out[f"sensitivity/{c}"] = sens[:, i]
                out[f"specificity/{c}"] = spec[:, i]
        want_auc = self.has_probs and (
            names is None or any(x == "macro_auc" or x.startswith("auc/") for x in names)
        )
        if want_auc:
            WT = np.ascontiguousarray(W.T)
            aucs = np.stack([prep.auc(WT, n) for prep in self.auc_prep], axis=1)
            for i, c in enumerate(self.classes):
                out[f"auc/{c}"] = aucs[:, i]
            # Macro over the classes whose AUC is defined on the data as given (like BACC).
            auc_set = self.auc_set
            out["macro_auc"] = (
                aucs[:, auc_set].mean(axis=1) if len(auc_set) else np.full(R, np.nan)
            )
        return out


def _prepare(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    y_pred: Any,
    groups: Any,
    melanoma: str | Sequence[str] | None,
    malignant: Sequence[str] | None,
) -> tuple[_GroupStats, np.ndarray | None, np.ndarray, np.ndarray]:
    names = _check_classes(classes)
    C = len(names)
    p = _check_probs(probs, C) if probs is not None else None
    n = p.shape[0] if p is not None else None
    yt = _check_labels(y_true, "y_true", C, n)
    if y_pred is None:
        if p is None:
            raise DataError("need probs or y_pred to score")
        yp = p.argmax(axis=1)
    else:
        yp = _check_labels(y_pred, "y_pred", C, len(yt))
    gidx, G = _group_index(groups, len(yt))
    stats = _GroupStats(yt, yp, p, names, gidx, G, melanoma, malignant)
    return stats, p, yt, yp


# --------------------------------------------------------------------------------------------
# public API


def classification_report(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    *,
    y_pred: Any = None,
    melanoma: str | Sequence[str] | None = DEFAULT_MELANOMA,
    malignant: Sequence[str] | None = DEFAULT_MALIGNANT,
) -> dict[str, Any]:
    """All metrics of one evaluation as a JSON-ready dict (conventions: module docstring).

    Keys: ``n``, ``classes``, ``accuracy``, ``bacc``, ``macro_f1``, ``top2``/``top3`` (k < C),
    ``macro_auc``, ``ece``, ``top1_ties``; per class (dicts keyed by class name)
    ``sensitivity``, ``specificity``, ``precision``, ``f1``, ``support``, ``auc``;
    ``mel_sensitivity``/``mel_specificity`` when a melanoma class exists;
    ``malignant_bacc``/``malignant_sensitivity``/``malignant_specificity`` when malignant classes
    exist; ``confusion_matrix`` (C×C, rows = truth, columns = decision). Undefined values are None.
    """
    stats, p, yt, yp = _prepare(y_true, probs, classes, y_pred, None, melanoma, malignant)
    assert p is not None
    names = stats.classes
    C, N = len(names), len(yt)
    scal = {k: v[0] for k, v in stats.metrics(np.ones((1, stats.n_groups))).items()}
    cm = np.bincount(yt * C + yp, minlength=C * C).reshape(C, C)
    support, predicted, tp = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / predicted
        f1 = 2 * tp / (support + predicted)
    top = p.max(axis=1, keepdims=True)

    report: dict[str, Any] = {"n": int(N), "classes": list(names)}
    for key in _SCALAR_ORDER:
        if key in scal:
            report[key] = _float_or_none(scal[key])
    report["top1_ties"] = int(((p == top).sum(axis=1) > 1).sum())
    report["sensitivity"] = {c: _float_or_none(scal[f"sensitivity/{c}"]) for c in names}
    report["specificity"] = {c: _float_or_none(scal[f"specificity/{c}"]) for c in names}
    report["precision"] = {c: _float_or_none(precision[i]) for i, c in enumerate(names)}
    report["f1"] = {c: _float_or_none(f1[i]) for i, c in enumerate(names)}
    report["support"] = {c: int(support[i]) for i, c in enumerate(names)}
    report["auc"] = {c: _float_or_none(scal[f"auc/{c}"]) for c in names}
    report["confusion_matrix"] = cm.astype(int).tolist()
    return report


def metric_names(
    classes: Sequence[str],
    *,
    with_probs: bool = True,
    with_auc: bool = True,
    melanoma: str | Sequence[str] | None = DEFAULT_MELANOMA,
    malignant: Sequence[str] | None = DEFAULT_MALIGNANT,
) -> list[str]:
    """The scalar metric names ``bootstrap_ci`` / ``paired_bootstrap`` accept for these classes."""
    names = _check_classes(classes)
    C = len(names)
    out = ["bacc", "accuracy", "macro_f1"]
    if with_probs:
        out += [f"top{k}" for k in (2, 3) if k < C]
        if with_auc:
            out.append("macro_auc")
        out.append("ece")
    if _find_class(names, melanoma) is not None:
        out += ["mel_sensitivity", "mel_specificity"]
    if _find_classes(names, malignant):
        out += ["malignant_bacc", "malignant_sensitivity", "malignant_specificity"]
    out += [f"sensitivity/{c}" for c in names] + [f"specificity/{c}" for c in names]
    if with_probs and with_auc:
        out += [f"auc/{c}" for c in names]
    return out


def _resolve_metrics(
    requested: Sequence[str] | None, available: list[str], default: list[str]
) -> list[str]:
    if requested is None:
        return default
    if isinstance(requested, str):
        requested = [requested]
    unknown = [m for m in requested if m not in available]
    if unknown:
        raise EdgedermError(
            f"unknown or unavailable metric(s) {unknown}; available: {', '.join(available)}"
        )
    return list(dict.fromkeys(requested))


def _check_boot_args(n_boot: int, alpha: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise EdgedermError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise EdgedermError(f"alpha must be in (0, 1), got {alpha!r}")


def _resample_chunks(n_groups: int, n_boot: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Draw-count matrices (≤ chunk × G), ``n_boot`` rows in all: each resample draws G groups
    with replacement. Every resample has its own generator spawned from ``seed``, so the draws
    do not depend on the chunking (which follows the data's size, to bound memory)."""
    children = np.random.SeedSequence(seed).spawn(n_boot)
    for start in range(0, n_boot, chunk):
        part = children[start : start + chunk]
        idx = np.stack([np.random.default_rng(c).integers(0, n_groups, n_groups) for c in part])
        idx += (np.arange(len(part)) * n_groups)[:, None]
        counts = np.bincount(idx.ravel(), minlength=len(part) * n_groups)
        yield counts.reshape(len(part), n_groups).astype(np.float64)


def _boot_metrics(
    stats_list: Sequence[_GroupStats], n_boot: int, seed: int, names: set[str]
) -> list[dict[str, np.ndarray]]:
    """Metrics of every resample for each of ``stats_list`` (same resamples for all)."""
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in stats_list]
    chunk = max(1, _CHUNK_ELEMENTS // max(st.work_width for st in stats_list))
    for W in _resample_chunks(stats_list[0].n_groups, n_boot, seed, chunk):
        for j, st in enumerate(stats_list):
            parts[j].append(st.metrics(W, names))
    return [{k: np.concatenate([p[k] for p in per]) for k in names} for per in parts]


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    *,
    groups: Any,
    y_pred: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    metrics: Sequence[str] | None = None,
    with_auc: bool = True,
    melanoma: str | Sequence[str] | None = DEFAULT_MELANOMA,
    malignant: Sequence[str] | None = DEFAULT_MALIGNANT,
) -> dict[str, dict[str, Any]]:
    """Percentile bootstrap CIs of scalar metrics, resampling **groups** (lesions), not images.

    ``groups`` gives each image's lesion id: a lesion's images are drawn together, so several
    images of one lesion do not pass for independent evidence. ``groups=None`` resamples images
    (only right when every image is its own lesion). Returns ``{name: {"value", "lo", "hi",
    "n_used", "level"}}`` where ``value`` is the metric on the data as given (equal to
    ``classification_report``'s), ``lo``/``hi`` the ``alpha/2`` and ``1-alpha/2`` percentiles,
    and ``n_used`` the resamples in which the metric was defined — a resample lacking a class
    that the metric needs (no melanoma drawn; a class of the BACC average missing) is skipped for
    that metric only. Names: see ``metric_names`` (per-class ones are ``sensitivity/MEL``,
    ``specificity/MEL``, ``auc/MEL``). ``metrics=None`` computes all of them (AUCs only if
    ``with_auc``). Deterministic given ``seed``.
    """
    _check_boot_args(n_boot, alpha)
    stats, _, _, _ = _prepare(y_true, probs, classes, y_pred, groups, melanoma, malignant)
    available = metric_names(
        stats.classes, with_probs=True, with_auc=True, melanoma=melanoma, malignant=malignant
    )
    default = metric_names(
        stats.classes, with_probs=True, with_auc=with_auc, melanoma=melanoma, malignant=malignant
    )
    wanted = _resolve_metrics(metrics, available, default)
    names = set(wanted)
    point = stats.metrics(np.ones((1, stats.n_groups)), names)
    boot = _boot_metrics([stats], int(n_boot), seed, names)[0]
    level = 1.0 - alpha
    out: dict[str, dict[str, Any]] = {}
    for name in wanted:
        out[name] = _ci_entry(float(point[name][0]), boot[name], alpha, name, int(n_boot))
        out[name]["level"] = level
    return out


def _ci_entry(
    value: float, samples: np.ndarray, alpha: float, name: str, n_boot: int
) -> dict[str, Any]:
    ok = samples[~np.isnan(samples)]
    entry: dict[str, Any] = {"value": _float_or_none(value), "lo": None, "hi": None}
    entry["n_used"] = int(ok.size)
    if ok.size and not math.isnan(value):
        lo, hi = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        entry["lo"], entry["hi"] = float(lo), float(hi)
        if ok.size < n_boot / 2:
            log.warning(
                "bootstrap: %s was defined in only %d of %d resamples; its CI is unreliable",
                name, ok.size, n_boot,
            )
    return entry


def _as_model_output(x: Any, name: str, n_classes: int) -> tuple[np.ndarray | None, np.ndarray]:
    """A model's output as (probs or None, decision): 2-D = probabilities, 1-D = decisions."""
    arr = np.asarray(x)
    if arr.ndim == 2:
        p = _check_probs(arr, n_classes)
        return p, p.argmax(axis=1)
    return None, _check_labels(arr, name, n_classes, None)


def paired_bootstrap(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    classes: Sequence[str],
    *,
    groups: Any,
    metric: str = "bacc",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    melanoma: str | Sequence[str] | None = DEFAULT_MELANOMA,
    malignant: Sequence[str] | None = DEFAULT_MALIGNANT,
) -> dict[str, Any]:
    """CI of ``metric(b) - metric(a)`` with both models scored on the *same* resampled lesions.

    ``pred_a`` / ``pred_b`` are decisions (N class indices) or probabilities (N×C, decision =
    argmax; needed for score metrics such as ``macro_auc``). Pairing cancels the lesion-sampling
    noise the two share, so it detects smaller differences than comparing two separate CIs.
    Returns ``{"metric", "a", "b", "diff", "lo", "hi", "p_value", "n_used"}``: ``diff`` on the
    data as given, ``lo``/``hi`` percentile limits, and a two-sided bootstrap p-value
    ``min(1, 2·min((#{d* ≤ 0}+1)/(n+1), (#{d* ≥ 0}+1)/(n+1)))`` over the n usable resamples
    (its resolution is about 2/n; identical models give 1).
    """
    _check_boot_args(n_boot, alpha)
    names = _check_classes(classes)
    C = len(names)
    pa, da = _as_model_output(pred_a, "pred_a", C)
    pb, db = _as_model_output(pred_b, "pred_b", C)
    yt = _check_labels(y_true, "y_true", C, None)
    for arr, label in ((da, "pred_a"), (db, "pred_b")):
        if len(arr) != len(yt):
            raise DataError(f"{label} has {len(arr)} entries but y_true has {len(yt)}")
    with_probs = pa is not None and pb is not None
    available = metric_names(
        names, with_probs=with_probs, with_auc=True, melanoma=melanoma, malignant=malignant
    )
    if metric not in available:
        hint = " (score metrics need N×C probabilities for both models)" if not with_probs else ""
        raise EdgedermError(
            f"unknown or unavailable metric {metric!r}{hint}; available: {', '.join(available)}"
        )
    gidx, G = _group_index(groups, len(yt))
    stats = [
        _GroupStats(yt, d, p if with_probs else None, names, gidx, G, melanoma, malignant)
        for p, d in ((pa, da), (pb, db))
    ]
    ones = np.ones((1, G))
    va = float(stats[0].metrics(ones, {metric})[metric][0])
    vb = float(stats[1].metrics(ones, {metric})[metric][0])
    ba, bb = (m[metric] for m in _boot_metrics(stats, int(n_boot), seed, {metric}))
    d = bb - ba
    d = d[~np.isnan(d)]
    out: dict[str, Any] = {
        "metric": metric,
        "a": _float_or_none(va),
        "b": _float_or_none(vb),
        "diff": _float_or_none(vb - va),
        "lo": None,
        "hi": None,
        "p_value": None,
        "n_used": int(d.size),
    }
    if d.size and not math.isnan(vb - va):
        lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        n = d.size
        p_le = (np.count_nonzero(d <= 0) + 1) / (n + 1)
        p_ge = (np.count_nonzero(d >= 0) + 1) / (n + 1)
        out.update(lo=float(lo), hi=float(hi), p_value=float(min(1.0, 2 * min(p_le, p_ge))))
    return out


def mcnemar(y_true: Any, pred_a: Any, pred_b: Any) -> dict[str, Any]:
    """McNemar's test of two decisions on the same images (image-level; ignores lesions).

    ``b`` = images A gets right and B wrong, ``c`` = A wrong and B right. With ``b + c`` below
    25 the exact two-sided binomial test (statistic = min(b, c)); otherwise the chi-square test
    with continuity correction, statistic ``(|b - c| - 1)² / (b + c)`` on 1 degree of freedom.
    """
    from scipy import stats as sps  # scipy comes with scikit-learn; imported lazily (slow import)

    yt = np.asarray(y_true)
    a, bpred = np.asarray(pred_a), np.asarray(pred_b)
    if not (yt.ndim == a.ndim == bpred.ndim == 1) or not (len(yt) == len(a) == len(bpred)):
        raise DataError(
            f"y_true, pred_a, pred_b must be 1-D of equal length, got shapes "
            f"{yt.shape}, {a.shape}, {bpred.shape}"
        )
    ok_a, ok_b = a == yt, bpred == yt
    b = int(np.count_nonzero(ok_a & ~ok_b))
    c = int(np.count_nonzero(~ok_a & ok_b))
    n = b + c
    if n == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "method": "exact binomial"}
    if n < MCNEMAR_EXACT_BELOW:
        p = sps.binomtest(b, n, 0.5, alternative="two-sided").pvalue
        return {
            "b": b,
            "c": c,
            "statistic": float(min(b, c)),
            "p_value": float(min(1.0, p)),
            "method": "exact binomial",
        }
    stat = (abs(b - c) - 1) ** 2 / n
    return {
        "b": b,
        "c": c,
        "statistic": float(stat),
        "p_value": float(sps.chi2.sf(stat, 1)),
        "method": "chi-square with continuity correction",
    }


def expected_calibration_error(probs: Any, y_true: Any, n_bins: int = ECE_BINS) -> float:
    """ECE of the top-1 confidence: ``sum_b (n_b / N) · |accuracy_b − mean confidence_b|`` over
    ``n_bins`` equal-width bins ``(b/n, (b+1)/n]``; correctness is argmax == y_true."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise EdgedermError(f"n_bins must be a positive integer, got {n_bins!r}")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise DataError(f"probs must be a 2-D array (images × classes), got shape {p.shape}")
    p = _check_probs(p, p.shape[1])
    yt = _check_labels(y_true, "y_true", p.shape[1], p.shape[0])
    conf = p.max(axis=1)
    gap = (p.argmax(axis=1) == yt) - conf
    sums = np.bincount(_ece_bins(conf, int(n_bins)), weights=gap, minlength=int(n_bins))
    return float(np.abs(sums).sum() / len(yt))


def operating_point(y_true_binary: Any, scores: Any, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when ``score >= threshold`` is called positive.

    ``>=`` is sklearn's ``roc_curve`` convention (a threshold read off its curve reproduces the
    curve's point). A value is NaN when its denominator is 0 (no positives / no negatives).
    """
    y = np.asarray(y_true_binary)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise DataError(
            f"y_true_binary and scores must be 1-D of equal length, got {y.shape} and {s.shape}"
        )
    if y.dtype.kind != "b":
        if not np.isin(y, (0, 1)).all():
            raise DataError("y_true_binary must hold 0/1 or booleans")
        y = y.astype(bool)
    called = s >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    sens = np.count_nonzero(called & y) / n_pos if n_pos else math.nan
    spec = np.count_nonzero(~called & ~y) / n_neg if n_neg else math.nan
    return float(sens), float(spec)


def format_number(x: Any, digits: int = 3, *, signed: bool = False) -> str:
    """``x`` with ``digits`` decimals (``+`` on positives when ``signed``); ``n/a`` for None, a
    bool, NaN or anything that is not a number."""
    if x is None or isinstance(x, bool):
        return "n/a"
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if math.isnan(f):
        return "n/a"
    return f"{f:+.{digits}f}" if signed else f"{f:.{digits}f}"


def format_ci(value: Any, lo: Any = None, hi: Any = None, *, digits: int = 3, signed: bool = False) -> str:
    """The one text form of an estimate with its confidence interval: ``0.812 [0.770–0.850]``.

    ``signed`` is for differences: ``+0.012 [-0.004 to +0.030]`` (an en dash next to a minus sign
    reads as a range of negatives). A missing or undefined value, lo or hi gives the value alone.
    """
    text = format_number(value, digits, signed=signed)
    if "n/a" in (text, format_number(lo), format_number(hi)):
        return text
    a, b = format_number(lo, digits, signed=signed), format_number(hi, digits, signed=signed)
    return f"{text} [{a} to {b}]" if signed else f"{text} [{a}–{b}]"


def format_ci_entry(entry: Any, *, digits: int = 3, signed: bool = False, key: str = "value") -> str:
    """:func:`format_ci` of a ``{"value", "lo", "hi"}`` entry (``bootstrap_ci``; ``key="diff"``
    for ``paired_bootstrap``); a bare number is formatted alone."""
    if isinstance(entry, Mapping):
        return format_ci(entry.get(key), entry.get("lo"), entry.get("hi"), digits=digits, signed=signed)
    return format_number(entry, digits, signed=signed)


def format_metrics_table(
    report_with_ci: Mapping[str, Any], *, digits: int = 3, level: float | None = None
) -> str:
    """A Markdown table ``metric | value | 95% CI``.

    Accepts ``bootstrap_ci`` output (``{name: {"value", "lo", "hi", ...}}``), a
    ``classification_report`` (scalars, and per-class dicts shown as ``sensitivity/MEL`` rows;
    the confusion matrix and class list are left out), or a mix of the two. Undefined values print
    as ``n/a``; rows without a CI print ``—`` in the CI column.
    """
    def num(x: Any) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "n/a"
        if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
            return str(int(x))
        return f"{float(x):.{digits}f}"

    rows: list[tuple[str, str, str]] = []
    levels = set()
    for key, val in report_with_ci.items():
        if isinstance(val, Mapping) and "value" in val:
            lo, hi = val.get("lo"), val.get("hi")
            ci = f"{num(lo)} – {num(hi)}" if lo is not None and hi is not None else "—"
            if "level" in val:
                levels.add(float(val["level"]))
            rows.append((key, num(val.get("value")), ci))
        elif isinstance(val, Mapping):
            for sub, x in val.items():
                if x is None or isinstance(x, (int, float, np.number)):
                    rows.append((f"{key}/{sub}", num(x), "—"))
        elif val is None or (
            isinstance(val, (int, float, np.number)) and not isinstance(val, bool)
        ):
            rows.append((key, num(val), "—"))
    if level is None:
        level = levels.pop() if len(levels) == 1 else 0.95
    pct = f"{100 * level:g}%"
    lines = [f"| metric | value | {pct} CI |", "|---|---:|:---:|"]
    lines += [f"| {m} | {v} | {c} |" for m, v, c in rows]
    return "\n".join(lines)
