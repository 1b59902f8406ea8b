"""Clinical operating points: calibrate decision thresholds on validation data, report them on
held-out data.

The clinical promise of a triage model is an operating point per critical class, e.g. *melanoma
sensitivity ≥ 0.85 with specificity ≥ 0.85*. ``calibrate`` searches the thresholds of the card's
``priority_thresholds`` rule (``edgederm.decision``) on **validation** data so that the promise
holds there; ``clinical_report`` then measures the same numbers, with lesion-level bootstrap CIs,
on a split the thresholds never saw. Calibration only ever receives validation arrays: there is
no way to hand it a test split.

**The multi-class rule, not one-vs-rest.** Thresholds interact: MEL is checked first, so an image
above both the MEL and the AKIEC threshold is called MEL, and a true MEL that the MEL threshold
misses may still be called AKIEC (or its argmax). A threshold read off a one-vs-rest ROC curve
therefore does not deliver its promised numbers. Here every candidate is scored by the
sensitivity and specificity it achieves *under the full rule*: classes are calibrated in priority
order, each one given the thresholds already chosen for the classes before it, and a candidate
for a later class is only feasible if it keeps every earlier class at the floors it was
accepted at (a later threshold can steal an earlier class's true positives from its argmax
fallback). The achieved numbers recorded in the card are recomputed with ``decide`` itself.

**Candidates and stability.** For class k (given the earlier thresholds) every threshold on a
grid of step 0.0005 is scored at once under the full rule. A threshold is *feasible* when the
hard numbers — exactly what ``decide`` gives on validation — meet the level's floors and keep
every earlier class at its floors. *Where* it goes among the feasible ones is decided on smoothed
numbers: each "p ≥ t" becomes Φ((p − t)/h) and "argmax is c" a sharp softmax (``smoothing``, h =
0.02 by default). The smoothed curves are continuous in the probabilities, and moving every
probability by δ moves them by at most δ along t, so the chosen threshold moves by about δ (tested:
probabilities perturbed by ≤ 0.01 move no threshold by more than 0.02). The former exact search
maximised a discrete count: on 30 melanomas one image is 3 pp, the maximum sat on a plateau of
tied candidates, and a 0.01 change of one probability could move the threshold by 0.15. A level
switch (a level that was just met is no longer met) is the one remaining jump, as it must be.

**Criterion** (``ThresholdConfig.criterion``), among the feasible thresholds of a level:

* ``"margin"`` (default): maximise the smaller of the two margins above the level's floors,
  ``min(sens − min_sens, spec − min_spec)`` (a smooth minimum of the smoothed margins, so that on
  a plateau of one margin the other still counts). A threshold chosen to maximise specificity
  puts sensitivity exactly at its floor on validation, so it misses the floor on new data about
  half the time; the largest common margin is the point most likely to still meet *both* floors.
* ``"max_spec"`` / ``"max_sens"``: the most specific (most sensitive) feasible threshold.
* ``"bacc"``: the best smoothed balanced accuracy under the rule (this one can still jump
  between two equally good thresholds far apart).

**Fallback chain** (configuration, per class): ``strict`` (the target's own floors) → each level
of ``ThresholdConfig.fallbacks`` in order → ``argmax`` (no threshold for that class: it is
decided by argmax like any other class). A fallback level only relaxes: each of its floors is
capped at the previous level's. The level that fired for each class is recorded in the card, so
nobody reads a relaxed operating point as the promised one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.special import ndtr

from edgederm.decision import decide
from edgederm.numerics import softmax
from edgederm.errors import EdgedermError
from edgederm.metrics import (
    _check_classes,
    _check_labels,
    _check_probs,
    _group_index,
    bootstrap_ci,
    format_ci_entry,
    paired_bootstrap,
)

log = logging.getLogger(__name__)

__all__ = [
    "CRITERIA",
    "Calibration",
    "FallbackLevel",
    "TargetSpec",
    "ThresholdConfig",
    "calibrate",
    "clinical_report",
    "format_clinical_table",
]

CRITERIA = ("margin", "max_spec", "max_sens", "bacc")
STRICT = "strict"
ARGMAX = "argmax"
# Ratios of integer counts compared with float floors (0.85 * 20 is not exactly 17).
_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# configuration


def _floor(value: Any, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise EdgedermError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= x <= 1.0 or math.isnan(x):
        raise EdgedermError(f"{what} must be in [0, 1], got {value!r}")
    return x


def _check_keys(d: Mapping[str, Any], allowed: set[str], what: str) -> None:
    if not isinstance(d, Mapping):
        raise EdgedermError(f"{what} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise EdgedermError(f"{what}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


@dataclass
class TargetSpec:
    """The clinical promise for one class: sensitivity ≥ ``min_sens`` with specificity ≥
    ``min_spec``. ``cls`` is matched to the class list case-insensitively."""

    cls: str
    min_sens: float
    min_spec: float

    def __post_init__(self) -> None:
        if not isinstance(self.cls, str) or not self.cls.strip():
            raise EdgedermError(f"a threshold target needs a class name, got {self.cls!r}")
        self.min_sens = _floor(self.min_sens, f"target {self.cls}: min_sens")
        self.min_spec = _floor(self.min_spec, f"target {self.cls}: min_spec")

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.cls, "min_sens": self.min_sens, "min_spec": self.min_spec}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TargetSpec":
        _check_keys(d, {"class", "cls", "min_sens", "min_spec"}, "threshold target")
        name = d.get("class", d.get("cls"))
        missing = [k for k in ("min_sens", "min_spec") if k not in d]
        if name is None or missing:
            raise EdgedermError(
                f"threshold target {dict(d)} needs 'class', 'min_sens' and 'min_spec'"
            )
        return cls(str(name), d["min_sens"], d["min_spec"])


@dataclass
class FallbackLevel:
    """A relaxed level of the fallback chain.

    ``min_sens`` / ``min_spec`` apply to every target class (``None``: keep the previous level's
    floor); ``per_class`` overrides them for named classes, ``{"AKIEC": (0.70, 0.65)}``. Every
    floor is capped at the previous level's floor for that class, so a level never tightens.
    """

    name: str
    min_sens: float | None = None
    min_spec: float | None = None
    per_class: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise EdgedermError(f"a fallback level needs a name, got {self.name!r}")
        if self.name in (STRICT, ARGMAX):
            raise EdgedermError(
                f"fallback level name {self.name!r} is reserved (the chain is always "
                f"'{STRICT}' → your levels → '{ARGMAX}')"
            )
        what = f"fallback level {self.name}"
        if self.min_sens is not None:
            self.min_sens = _floor(self.min_sens, f"{what}: min_sens")
        if self.min_spec is not None:
            self.min_spec = _floor(self.min_spec, f"{what}: min_spec")
        checked: dict[str, tuple[float | None, float | None]] = {}
        for name, pair in dict(self.per_class).items():
            if isinstance(pair, Mapping):
                _check_keys(pair, {"min_sens", "min_spec"}, f"{what}: per_class {name}")
                pair = (pair.get("min_sens"), pair.get("min_spec"))
            try:
                s, p = pair
            except (TypeError, ValueError):
                raise EdgedermError(
                    f"{what}: per_class {name} must be {{min_sens, min_spec}}, got {pair!r}"
                ) from None
            checked[str(name)] = (
                None if s is None else _floor(s, f"{what}: {name} min_sens"),
                None if p is None else _floor(p, f"{what}: {name} min_spec"),
            )
        self.per_class = checked

    def floors(self, cls: str, previous: tuple[float, float]) -> tuple[float, float]:
        """This level's (min_sens, min_spec) for ``cls`` given the previous level's floors."""
        s, p = self.min_sens, self.min_spec
        for name, pair in self.per_class.items():
            if name.casefold() == cls.casefold():
                s, p = pair
        s = previous[0] if s is None else min(s, previous[0])
        p = previous[1] if p is None else min(p, previous[1])
        return s, p

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.min_sens is not None:
            d["min_sens"] = self.min_sens
        if self.min_spec is not None:
            d["min_spec"] = self.min_spec
        if self.per_class:
            d["per_class"] = {
                k: {"min_sens": s, "min_spec": p} for k, (s, p) in self.per_class.items()
            }
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FallbackLevel":
        _check_keys(d, {"name", "min_sens", "min_spec", "per_class"}, "fallback level")
        if "name" not in d:
            raise EdgedermError(f"fallback level {dict(d)} needs a 'name'")
        return cls(
            str(d["name"]), d.get("min_sens"), d.get("min_spec"), dict(d.get("per_class") or {})
        )


def _default_targets() -> list[TargetSpec]:
    # The founding projects' clinical promise.
    return [TargetSpec("MEL", 0.85, 0.85), TargetSpec("AKIEC", 0.75, 0.70)]


def _default_fallbacks() -> list[FallbackLevel]:
    return [FallbackLevel("relaxed", 0.80, 0.80, {"AKIEC": (0.70, 0.65)})]


@dataclass
class ThresholdConfig:
    """What ``calibrate`` aims for, and what it settles for.

    In a recipe (YAML), ``ThresholdConfig.from_dict`` of::

        thresholds:
          targets:
            - {class: MEL,   min_sens: 0.85, min_spec: 0.85}
            - {class: AKIEC, min_sens: 0.75, min_spec: 0.70}
          fallbacks:
            - {name: relaxed, min_sens: 0.80, min_spec: 0.80,
               per_class: {AKIEC: {min_sens: 0.70, min_spec: 0.65}}}
            - argmax            # optional: the chain always ends in argmax
          priority: [MEL, AKIEC]  # default: the order of targets
          criterion: margin       # margin | max_spec | max_sens | bacc

    Targets may name any class (``malignant`` for the binary taxonomy, ``melanoma`` for PH2);
    targets whose class is not in the model's class list are skipped with a log line.
    """

    targets: list[TargetSpec] = field(default_factory=_default_targets)
    fallbacks: list[FallbackLevel] = field(default_factory=_default_fallbacks)
    priority: list[str] | None = None
    criterion: str = "margin"
    smoothing: float = 0.02  # width h of the smoothed curves that place a threshold (see module doc)

    def __post_init__(self) -> None:
        try:
            self.smoothing = float(self.smoothing)
        except (TypeError, ValueError):
            raise EdgedermError(f"thresholds smoothing must be a number, got {self.smoothing!r}") from None
        if not 0.001 <= self.smoothing <= 0.2:
            raise EdgedermError(f"thresholds smoothing must be in [0.001, 0.2], got {self.smoothing}")
        self.targets = [t if isinstance(t, TargetSpec) else TargetSpec.from_dict(t) for t in self.targets]
        self.fallbacks = [
            f if isinstance(f, FallbackLevel) else FallbackLevel.from_dict(f) for f in self.fallbacks
        ]
        names = [t.cls.casefold() for t in self.targets]
        if len(set(names)) != len(names):
            raise EdgedermError(f"threshold targets name a class twice: {[t.cls for t in self.targets]}")
        levels = [f.name for f in self.fallbacks]
        if len(set(levels)) != len(levels):
            raise EdgedermError(f"fallback level names must be unique, got {levels}")
        if self.priority is not None:
            prio = [str(p) for p in self.priority]
            if sorted(p.casefold() for p in prio) != sorted(names):
                raise EdgedermError(
                    f"threshold priority {prio} must list each target class once: "
                    f"{[t.cls for t in self.targets]}"
                )
            self.priority = prio
        if self.criterion not in CRITERIA:
            raise EdgedermError(
                f"unknown threshold criterion {self.criterion!r}; choose one of {list(CRITERIA)}"
            )

    def ordered_targets(self) -> list[TargetSpec]:
        """Targets in priority order."""
        if self.priority is None:
            return list(self.targets)
        by_name = {t.cls.casefold(): t for t in self.targets}
        return [by_name[p.casefold()] for p in self.priority]

    def chain(self, target: TargetSpec) -> list[tuple[str, tuple[float, float]]]:
        """The (level name, (min_sens, min_spec)) levels tried for ``target``, before argmax."""
        levels = [(STRICT, (target.min_sens, target.min_spec))]
        for fb in self.fallbacks:
            levels.append((fb.name, fb.floors(target.cls, levels[-1][1])))
        return levels

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "targets": [t.to_dict() for t in self.targets],
            "fallbacks": [f.to_dict() for f in self.fallbacks] + [ARGMAX],
            "criterion": self.criterion,
            "smoothing": self.smoothing,
        }
        if self.priority is not None:
            d["priority"] = list(self.priority)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ThresholdConfig":
        """A config from its dict form; missing keys take the defaults."""
        if d is None:
            return cls()
        _check_keys(d, {"targets", "fallbacks", "priority", "criterion", "smoothing"}, "thresholds config")
        kw: dict[str, Any] = {}
        if "targets" in d:
            targets = d["targets"]
            if isinstance(targets, Mapping):  # {MEL: {min_sens, min_spec}} shorthand
                targets = [{"class": k, **dict(v)} for k, v in targets.items()]
            kw["targets"] = [TargetSpec.from_dict(t) for t in targets]
        if "fallbacks" in d:
            raw = list(d["fallbacks"] or [])
            for i, f in enumerate(raw):
                if f == ARGMAX and i != len(raw) - 1:
                    raise EdgedermError("'argmax' can only be the last fallback level")
            kw["fallbacks"] = [FallbackLevel.from_dict(f) for f in raw if f != ARGMAX]
        if d.get("priority") is not None:
            kw["priority"] = list(d["priority"])
        if "criterion" in d:
            kw["criterion"] = str(d["criterion"])
        if "smoothing" in d:
            kw["smoothing"] = d["smoothing"]
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# calibration


@dataclass
class Calibration:
    """The result of ``calibrate``: ``decision`` goes into the card as is."""

    decision: dict[str, Any]

    @property
    def rule(self) -> str:
        return str(self.decision["rule"])

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.decision.get("thresholds", {}))

    @property
    def fallback(self) -> dict[str, str]:
        """The level of the chain that fired for each calibrated class."""
        return dict(self.decision.get("fallback", {}))

    @property
    def achieved(self) -> dict[str, dict[str, Any]]:
        return dict(self.decision["calibrated_on"]["achieved"])

    def summary(self) -> str:
        """One line per target class, for logs."""
        lines = []
        for cls, a in self.achieved.items():
            t = self.thresholds.get(cls)
            where = f"threshold {t:.4f}" if t is not None else "no threshold (argmax)"
            floors = (
                f" (floors {a['min_sens']:.2f}/{a['min_spec']:.2f})" if a["min_sens"] is not None else ""
            )
            lines.append(
                f"{cls}: {self.fallback.get(cls)} level, {where}, val sens {_fmt(a['sens'])} "
                f"spec {_fmt(a['spec'])}{floors}"
            )
        return "\n".join(lines)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _resolve(name: str, classes: Sequence[str]) -> str | None:
    for c in classes:
        if c.casefold() == name.casefold():
            return c
    return None


def _sens_spec(y: np.ndarray, pred: np.ndarray, c: int) -> tuple[float | None, float | None]:
    pos = y == c
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    sens = float(np.count_nonzero(pos & (pred == c)) / n_pos) if n_pos else None
    spec = float(np.count_nonzero(~pos & (pred != c)) / n_neg) if n_neg else None
    return sens, spec


def _bacc(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    support = np.bincount(y, minlength=n_classes)
    tp = np.bincount(y[pred == y], minlength=n_classes)
    present = support > 0
    return float((tp[present] / support[present]).mean())


# Threshold grid: fine against the smoothing width (0.02), coarse enough to evaluate every grid
# point at once. Chunked so that a large validation set stays within a few hundred MB.
_GRID = np.linspace(0.0, 1.0, 2001)[1:-1]
_CHUNK = 256


def _soft_argmax(probs: np.ndarray, width: float) -> np.ndarray:
    """A continuous stand-in for one-hot(argmax): softmax of the probabilities at temperature
    ``width / 4`` (rows whose top two differ by more than the smoothing width are ~one-hot)."""
    return softmax(probs / max(width / 4.0, 1e-12))


class _Search:
    """Class ``k``'s threshold given the thresholds already fixed, on a grid of thresholds.

    For every grid threshold t it computes, under the full multi-class rule (the classes after
    ``k`` have no threshold yet):

    * **hard** numbers, exactly what ``decide`` gives: k's sensitivity and specificity, and the
      sensitivity of every earlier class (a threshold for k may not steal their calls);
    * **smoothed** numbers: each indicator "p ≥ t" replaced by Φ((p − t)/h) and "argmax is c" by a
      sharp softmax, so that they are continuous in the probabilities.

    Feasibility (does a threshold meet the floors?) is decided on the hard numbers, so what the
    card records is what ``decide`` delivers on validation; *where* the threshold goes among the
    feasible ones is decided on the smoothed numbers. That makes the choice stable: probabilities
    moved by δ move the smoothed curves by at most δ along t, so the chosen threshold moves by
    about δ, instead of jumping between tied candidates of a discrete count (with 30 melanomas one
    image is 3 pp of sensitivity, and an argmax over such steps is not stable).
    """

    def __init__(self, y: np.ndarray, probs: np.ndarray, classes: list[str], fixed: dict[str, float],
                 k: int, width: float, watch: Sequence[int] = ()) -> None:
        N, C = probs.shape
        self.k, self.C, self.y, self.width = k, C, y, width
        self.support = np.bincount(y, minlength=C).astype(np.float64)
        argmax = probs.argmax(axis=1)
        soft_arg = _soft_argmax(probs, width)
        # Earlier thresholds, hard and smoothed: who is decided before k, and as which class.
        hard_by = np.full(N, -1)
        soft_undecided = np.ones(N)
        soft_fixed = np.zeros((N, C))  # P(decided as c by an earlier threshold)
        for name, t in fixed.items():
            c = classes.index(name)
            fire = (hard_by < 0) & (probs[:, c] >= t)
            hard_by[fire] = c
            f = ndtr((probs[:, c] - t) / width)
            soft_fixed[:, c] += soft_undecided * f
            soft_undecided = soft_undecided * (1.0 - f)
        self.hard_undecided = hard_by < 0
        self.pk = probs[:, k]
        self.argmax = argmax
        self.soft_undecided = soft_undecided
        rows = np.arange(N)
        # Per image, smoothed P(true class) decided by earlier thresholds, and its argmax weights.
        self.soft_fixed_true = soft_fixed[rows, y]
        self.soft_arg_true = soft_arg[rows, y]
        self.soft_arg_k = soft_arg[:, k]
        self.hard_fixed_correct = (hard_by == y)
        # Classes whose sensitivity a threshold for k must not take (earlier ones, thresholded or
        # left to argmax).
        self.earlier = sorted(set(watch) | {classes.index(n) for n in fixed})

    def evaluate(self) -> dict[str, np.ndarray]:
        """Hard and smoothed numbers at every grid threshold (arrays of len(_GRID))."""
        y, k = self.y, self.k
        pos, neg = y == k, y != k
        n_pos, n_neg = max(pos.sum(), 1), max(neg.sum(), 1)
        out: dict[str, list[np.ndarray]] = {key: [] for key in ("sens", "spec", "s_sens", "s_spec", "s_bacc")}
        for c in self.earlier:
            out[f"sens/{c}"] = []
        present = self.support > 0
        for lo in range(0, len(_GRID), _CHUNK):
            t = _GRID[lo : lo + _CHUNK][:, None]  # (G, 1)
            fire = self.hard_undecided & (self.pk >= t)  # (G, N): decided as k by its threshold
            called_k = fire | (self.hard_undecided & (self.argmax == k))
            out["sens"].append((called_k & pos).sum(1) / n_pos)
            out["spec"].append(1.0 - (called_k & neg).sum(1) / n_neg)
            correct = np.where(pos, called_k, self.hard_fixed_correct | (self.hard_undecided & ~fire & (self.argmax == y)))
            for c in self.earlier:
                m = y == c
                out[f"sens/{c}"].append(correct[:, m].sum(1) / max(m.sum(), 1))
            f = ndtr((self.pk - t) / self.width)  # (G, N)
            s_called_k = self.soft_undecided * (f + (1.0 - f) * self.soft_arg_k)
            out["s_sens"].append((s_called_k * pos).sum(1) / n_pos)
            out["s_spec"].append(1.0 - (s_called_k * neg).sum(1) / n_neg)
            # Smoothed P(correct) per image: k's own images via s_called_k; others by an earlier
            # threshold, or undecided, not taken by k, and their argmax.
            s_correct = np.where(pos, s_called_k,
                                 self.soft_fixed_true + self.soft_undecided * (1.0 - f) * self.soft_arg_true)
            recall = np.stack([s_correct[:, y == c].mean(1) if present[c] else np.zeros(len(t)) for c in range(self.C)], 1)
            out["s_bacc"].append(recall[:, present].mean(1))
        return {key: np.concatenate(v) for key, v in out.items()}


def _pick(ev: dict[str, np.ndarray], floors: tuple[float, float], keep: dict[int, tuple[float, float]],
          criterion: str, width: float) -> float | None:
    """The grid threshold that meets the floors (hard numbers, ``_Search.evaluate``) and is best
    on the smoothed criterion, or None when no threshold meets them."""
    ok = (ev["sens"] >= floors[0] - _EPS) & (ev["spec"] >= floors[1] - _EPS)
    for c, (fs, _fp) in keep.items():  # earlier classes keep the sensitivity they were accepted at
        ok &= ev[f"sens/{c}"] >= fs - _EPS
    if not ok.any():
        return None
    a, b = ev["s_sens"] - floors[0], ev["s_spec"] - floors[1]
    if criterion == "margin":
        # A smooth minimum of the two margins: the largest common margin above the floors, with
        # no ties to break on a plateau of one margin (the other one still counts a little).
        score = -width * np.logaddexp(-a / width, -b / width)
    else:
        score = {"max_spec": ev["s_spec"] + 1e-3 * ev["s_sens"], "max_sens": ev["s_sens"] + 1e-3 * ev["s_spec"],
                 "bacc": ev["s_bacc"]}[criterion]
    score = np.where(ok, score, -np.inf)
    return float(_GRID[int(np.argmax(score))])


def calibrate(
    y_val: Any,
    probs_val: Any,
    classes: Sequence[str],
    config: ThresholdConfig | Mapping[str, Any] | None = None,
    *,
    calibrated_on: Mapping[str, Any] | None = None,
) -> Calibration:
    """Thresholds for the ``priority_thresholds`` rule, searched on validation data.

    ``y_val`` (N class indices) and ``probs_val`` (N×C probabilities) are the **validation**
    split; ``config`` a ``ThresholdConfig`` or its dict form (default: MEL 0.85/0.85, AKIEC
    0.75/0.70, then relaxed, then argmax). ``calibrated_on`` adds provenance to the card's
    ``decision.calibrated_on`` (e.g. ``{"probs": "out-of-fold stacked"}``, a data fingerprint).

    Returns a ``Calibration`` whose ``decision`` is the card's decision object::

        {"rule": "priority_thresholds" | "argmax", "thresholds": {cls: t}, "priority": [...],
         "fallback": {cls: level}, "fallback_fired": deepest non-strict level or None,
         "targets": {cls: {min_sens, min_spec}}, "criterion": ...,
         "calibrated_on": {"split": "val", "n": N, "achieved": {cls: {sens, spec, min_sens,
                           min_spec}}, "bacc": ..., "bacc_argmax": ...}}

    ``achieved`` are validation numbers under the full rule (recomputed with ``decide``) and the
    floors of the level that fired (``None`` for argmax: no floor was met). Target classes absent
    from ``classes`` are skipped (logged, listed under ``skipped``); a class without positives in
    ``y_val`` cannot be calibrated and falls to argmax with a warning.
    """
    cfg = config if isinstance(config, ThresholdConfig) else ThresholdConfig.from_dict(config)
    names = _check_classes(classes)
    probs = _check_probs(probs_val, len(names))
    y = _check_labels(y_val, "y_val", len(names), probs.shape[0])
    C = len(names)

    fixed: dict[str, float] = {}
    keep: dict[int, tuple[float, float]] = {}
    fallback: dict[str, str] = {}
    floors_used: dict[str, tuple[float, float]] = {}  # floors of the level that fired
    targets: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    for target in cfg.ordered_targets():
        cls = _resolve(target.cls, names)
        if cls is None:
            log.info("threshold target %s skipped: not a class of this model (%s)", target.cls, names)
            skipped.append(target.cls)
            continue
        k = names.index(cls)
        targets[cls] = {"min_sens": target.min_sens, "min_spec": target.min_spec}
        chain = cfg.chain(target)
        n_pos = int((y == k).sum())
        if n_pos == 0 or n_pos == len(y):
            log.warning(
                "threshold for %s not calibrated: validation has %d of %d images of it; argmax",
                cls, n_pos, len(y),
            )
            fallback[cls] = ARGMAX
            continue
        ev = _Search(y, probs, names, fixed, k, cfg.smoothing, watch=list(keep)).evaluate()
        for level, floors in chain:
            t = _pick(ev, floors, keep, cfg.criterion, cfg.smoothing)
            if t is not None:
                fixed[cls] = t
                keep[k] = floors
                fallback[cls], floors_used[cls] = level, floors
                break
            log.info(
                "threshold for %s: no threshold meets the %s floors sens ≥ %.2f, spec ≥ %.2f "
                "under the multi-class rule on validation",
                cls, level, *floors,
            )
        else:
            fallback[cls] = ARGMAX
            # Priority still holds for a class left to argmax: a lower-priority threshold may not
            # take away the sensitivity it has now (otherwise an AKIEC threshold could pull
            # melanomas out of their argmax calls).
            now = decide(probs, names, {"rule": "priority_thresholds" if fixed else "argmax",
                                        "thresholds": dict(fixed), "priority": list(fixed)})
            sens_now, _ = _sens_spec(y, now, k)
            keep[k] = (float(sens_now or 0.0), 0.0)
            log.warning("threshold for %s: every level of the fallback chain failed; argmax "
                        "(later thresholds must keep its sensitivity %.3f)", cls, sens_now or 0.0)

    decision: dict[str, Any] = {
        "rule": "priority_thresholds" if fixed else "argmax",
        "thresholds": dict(fixed),
        "priority": list(fixed),
    }
    pred = decide(probs, names, decision)
    achieved: dict[str, dict[str, Any]] = {}
    for cls in fallback:
        sens, spec = _sens_spec(y, pred, names.index(cls))
        fs, fp = floors_used.get(cls, (None, None))
        achieved[cls] = {"sens": sens, "spec": spec, "min_sens": fs, "min_spec": fp}
        if fs is not None and fp is not None:
            # The search's cumulative counts and decide() must agree; a mismatch is a bug here.
            assert sens is not None and spec is not None
            assert sens >= fs - _EPS and spec >= fp - _EPS, (cls, sens, spec, fs, fp)
    order = [STRICT] + [f.name for f in cfg.fallbacks] + [ARGMAX]
    worst = max((order.index(v) for v in fallback.values()), default=0)
    decision.update(
        fallback=fallback,
        fallback_fired=order[worst] if worst > 0 else None,
        targets=targets,
        criterion=cfg.criterion,
        smoothing=cfg.smoothing,
        calibrated_on={
            "split": "val",
            "n": int(len(y)),
            "achieved": achieved,
            "bacc": _bacc(y, pred, C),
            "bacc_argmax": _bacc(y, probs.argmax(axis=1), C),
            **dict(calibrated_on or {}),
        },
    )
    if skipped:
        decision["skipped"] = skipped
    cal = Calibration(decision)
    for line in cal.summary().splitlines():
        log.info("calibrated %s", line)
    return cal


# --------------------------------------------------------------------------------------------
# held-out report


def clinical_report(
    y: Any,
    probs: Any,
    classes: Sequence[str],
    decision: Mapping[str, Any],
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    config: ThresholdConfig | Mapping[str, Any] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The clinical targets checked on a held-out split, under the card's decision rule.

    For each target class: sensitivity and specificity of ``decide(probs, classes, decision)``
    with lesion-level bootstrap CIs (``groups`` = lesion ids; ``None`` treats every image as its
    own lesion), the argmax values for comparison, and whether the target is met by the point
    estimate (``met``) and by the CI's lower bound (``met_at_lower_bound``); ``None`` where a
    number is undefined (no positives). BACC under the rule and under argmax, each with a CI, and
    their paired difference. Targets come from ``config``, else the decision's ``targets``
    (written by ``calibrate``), else the defaults. The report never changes the decision: the
    thresholds were fixed on validation.
    """
    names = _check_classes(classes)
    p = _check_probs(probs, len(names))
    yt = _check_labels(y, "y", len(names), p.shape[0])
    if groups is None:
        log.info("clinical_report: no lesion ids given; resampling images (one image per lesion)")
    _, n_groups = _group_index(groups, len(yt))
    if config is not None:
        cfg = config if isinstance(config, ThresholdConfig) else ThresholdConfig.from_dict(config)
        specs = cfg.ordered_targets()
    elif decision.get("targets"):
        specs = [TargetSpec(c, v["min_sens"], v["min_spec"]) for c, v in decision["targets"].items()]
    else:
        specs = ThresholdConfig().ordered_targets()

    rule_pred = decide(p, names, dict(decision))
    argmax_pred = p.argmax(axis=1)
    present = [(s, _resolve(s.cls, names)) for s in specs]
    for s, cls in present:
        if cls is None:
            log.info("clinical_report: target %s skipped: not a class (%s)", s.cls, names)
    present = [(s, c) for s, c in present if c is not None]
    wanted = ["bacc"] + [f"{m}/{c}" for _, c in present for m in ("sensitivity", "specificity")]
    ci = bootstrap_ci(
        yt, p, names, groups=groups, y_pred=rule_pred, n_boot=n_boot, seed=seed, alpha=alpha,
        metrics=wanted,
    )
    ci_arg = bootstrap_ci(
        yt, p, names, groups=groups, y_pred=argmax_pred, n_boot=n_boot, seed=seed, alpha=alpha,
        metrics=["bacc"],
    )
    diff = paired_bootstrap(
        yt, argmax_pred, rule_pred, names, groups=groups, metric="bacc", n_boot=n_boot,
        seed=seed, alpha=alpha,
    )

    def entry(e: Mapping[str, Any]) -> dict[str, Any]:
        return {"value": e["value"], "lo": e["lo"], "hi": e["hi"], "n_used": e["n_used"]}

    def meets(sens: Any, spec: Any, s: TargetSpec) -> bool | None:
        if sens is None or spec is None:
            return None
        return bool(sens >= s.min_sens - _EPS and spec >= s.min_spec - _EPS)

    thresholds = dict(decision.get("thresholds", {})) if decision.get("rule") != ARGMAX else {}
    fallback = dict(decision.get("fallback", {}))
    out_targets: dict[str, Any] = {}
    for s, cls in present:
        k = names.index(cls)
        sens, spec = ci[f"sensitivity/{cls}"], ci[f"specificity/{cls}"]
        a_sens, a_spec = _sens_spec(yt, argmax_pred, k)
        out_targets[cls] = {
            "min_sens": s.min_sens,
            "min_spec": s.min_spec,
            "threshold": thresholds.get(cls),
            "fallback": fallback.get(cls),
            "n_pos": int((yt == k).sum()),
            "n_neg": int((yt != k).sum()),
            "sens": entry(sens),
            "spec": entry(spec),
            "sens_argmax": a_sens,
            "spec_argmax": a_spec,
            "met": meets(sens["value"], spec["value"], s),
            "met_at_lower_bound": meets(sens["lo"], spec["lo"], s),
        }
    flags = [t["met"] for t in out_targets.values()]
    low = [t["met_at_lower_bound"] for t in out_targets.values()]
    return {
        "n": int(len(yt)),
        "n_groups": int(n_groups),
        "n_boot": int(n_boot),
        "level": 1.0 - alpha,
        "rule": decision.get("rule", ARGMAX),
        "targets": out_targets,
        "bacc": {
            "rule": entry(ci["bacc"]),
            "argmax": entry(ci_arg["bacc"]),
            "diff": {k: diff[k] for k in ("diff", "lo", "hi", "p_value", "n_used")},
        },
        "all_met": None if None in flags else all(flags),
        "all_met_at_lower_bound": None if None in low else all(low),
    }


def format_clinical_table(report: Mapping[str, Any], *, digits: int = 3) -> str:
    """A Markdown table of ``clinical_report``: one row per target class, then BACC."""

    def num(x: Any) -> str:
        return "n/a" if x is None else f"{float(x):.{digits}f}"

    def with_ci(e: Mapping[str, Any]) -> str:
        return format_ci_entry(e, digits=digits)

    def yes(x: bool | None) -> str:
        return "n/a" if x is None else ("yes" if x else "**no**")

    pct = f"{100 * float(report.get('level', 0.95)):g}%"
    lines = [
        f"| class | target sens / spec | threshold (level) | sensitivity ({pct} CI) | "
        f"specificity ({pct} CI) | argmax sens / spec | met | met at CI lower bound |",
        "|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|",
    ]
    for cls, t in report["targets"].items():
        thr = "—" if t.get("threshold") is None else f"{t['threshold']:.4f}"
        if t.get("fallback"):
            thr += f" ({t['fallback']})"
        lines.append(
            f"| {cls} | ≥ {t['min_sens']:.2f} / ≥ {t['min_spec']:.2f} | {thr} | "
            f"{with_ci(t['sens'])} | {with_ci(t['spec'])} | "
            f"{num(t['sens_argmax'])} / {num(t['spec_argmax'])} | {yes(t['met'])} | "
            f"{yes(t['met_at_lower_bound'])} |"
        )
    b = report["bacc"]
    d = b["diff"]
    diff = format_ci_entry(d, digits=digits, key="diff", signed=True)
    lines += [
        "",
        f"| BACC under the rule ({pct} CI) | BACC argmax ({pct} CI) | rule − argmax ({pct} CI) |",
        "|:---:|:---:|:---:|",
        f"| {with_ci(b['rule'])} | {with_ci(b['argmax'])} | {diff} |",
        "",
        f"n = {report['n']} images, {report['n_groups']} lesions, {report['n_boot']} "
        f"lesion-level bootstrap resamples; rule: {report['rule']}.",
    ]
    return "\n".join(lines)
