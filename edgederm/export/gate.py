"""The accuracy gate: does an exported artifact still do the clinical job of its FP32 reference?

Both models are run through the one runtime (``edgederm.runtime.load``: the card's preprocessing
and TTA views) on the lesion-disjoint **validation** split, and compared on the same images:

* BACC, per-class sensitivity / specificity and melanoma sensitivity / specificity, each with a
  lesion-level bootstrap CI, under the decision rule of the card. With clinical thresholds
  (``priority_thresholds``) the thresholds are **re-fitted for each model** on validation with
  ``edgederm.thresholds.calibrate`` (the reference card's targets and fallback chain) and
  re-checked with the multi-class rule, as a deployment would do for that artifact; if the
  reference decides by argmax, both are compared by argmax.
* top-1 agreement with the reference (decisions, and raw argmax), the largest probability
  difference, the paired bootstrap CI of the BACC difference (the same lesions resampled for
  both; ``metrics.paired_bootstrap``) and McNemar's test on the decisions (``metrics.mcnemar``).

Rules (defaults; all configurable): BACC drop ≤ 1.0 pp, melanoma sensitivity drop ≤ 2.0 pp, no
class's recall (sensitivity) dropping more than 5 pp. Non-finite outputs (NaN/Inf, e.g. an FP16
overflow) fail outright. Drops are point estimates on the validation split, the numbers a
reviewer reads; the CIs say how much the split can tell.

``edgederm gate ARTIFACT --baseline CARD_OR_ARTIFACT`` uses the same machinery as a CI
accuracy-regression gate: against a baseline artifact (both are run, paired statistics), or
against the metrics a baseline card recorded on the same evaluation set (unpaired). Exit codes:
0 pass, 1 gate failed, 2 bad input.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.records import DatasetIndex
from ..decision import decide
from ..errors import EdgedermError
from ..fsutil import write_json_atomic, write_text_atomic
from ..metrics import DEFAULT_MELANOMA, bootstrap_ci, mcnemar, paired_bootstrap
from ..runtime.base import Predictor

log = logging.getLogger(__name__)

_EPS = 1e-9


# -- configuration --------------------------------------------------------------------------------
@dataclass
class Tolerances:
    """How much worse than the reference an artifact may be (percentage points, point estimates)."""

    bacc_pp: float = 1.0
    mel_sens_pp: float = 2.0
    class_pp: float = 5.0
    per_class_pp: dict[str, float] = field(default_factory=dict)  # overrides class_pp
    min_agreement: float | None = None  # optional: top-1 agreement with the reference ≥ this
    min_class_support: int = 1  # classes with fewer validation images are reported, not gated

    def __post_init__(self) -> None:
        for name in ("bacc_pp", "mel_sens_pp", "class_pp"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v):
                raise EdgedermError(f"tolerance {name} must be a number, got {v!r}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise EdgedermError(f"min_agreement must be in [0, 1], got {self.min_agreement}")

    def for_class(self, cls: str) -> float:
        for k, v in self.per_class_pp.items():
            if k.casefold() == cls.casefold():
                return float(v)
        return float(self.class_pp)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def parse_class(values: Sequence[str] | None) -> tuple[float | None, dict[str, float]]:
        """``--tolerance-class 5`` and/or ``--tolerance-class AKIEC=8`` → (all, per class)."""
        default: float | None = None
        per: dict[str, float] = {}
        for v in values or []:
            key, sep, val = str(v).partition("=")
            try:
                if sep:
                    per[key.strip()] = float(val)
                else:
                    default = float(key)
            except ValueError:
                raise EdgedermError(f"--tolerance-class takes PP or CLASS=PP, got {v!r}") from None
        return default, per


# -- predictions ----------------------------------------------------------------------------------
@dataclass
class Predictions:
    """One model's probabilities on the gate's images (with the labels and lesions)."""

    name: str
    classes: list[str]
    image_ids: list[str]
    y: np.ndarray
    groups: list[str]
    probs: np.ndarray
    decision: dict[str, Any]
    views: list[str]
    skipped: int = 0

    @property
    def n_nonfinite(self) -> int:
        return int((~np.isfinite(self.probs)).any(axis=1).sum())

    def subset(self, ids: Sequence[str]) -> "Predictions":
        pos = {i: k for k, i in enumerate(self.image_ids)}
        rows = [pos[i] for i in ids]
        return Predictions(self.name, self.classes, list(ids), self.y[rows], [self.groups[r] for r in rows],
                           self.probs[rows], self.decision, self.views, self.skipped)


def predict(predictor: Predictor, index: DatasetIndex, *, tta: bool | Sequence[str] | None = None,
            batch_size: int = 16, name: str | None = None) -> Predictions:
    """Run ``predictor`` over ``index`` through the runtime (card preprocessing and TTA)."""
    from ..evaluate import predict_index

    kept, skipped, probs = predict_index(predictor, index, tta=tta, batch_size=batch_size)
    assert isinstance(probs, np.ndarray)
    lookup = {c: i for i, c in enumerate(index.classes)}
    return Predictions(
        name=name or predictor.path.name,
        classes=list(index.classes),
        image_ids=[r.image_id for r in kept],
        y=np.array([lookup[r.label] for r in kept]),
        groups=[r.group for r in kept],
        probs=np.asarray(probs, dtype=np.float64),
        decision=dict(predictor.card.decision),
        views=predictor.views(tta),
        skipped=len(skipped),
    )


@dataclass
class RecordedBaseline:
    """A baseline known only by the metrics its card recorded on an evaluation set."""

    name: str
    split: str
    n: int
    metrics: dict[str, Any]  # bootstrap_ci-style entries: {"bacc": {"value", "lo", "hi"}, ...}
    decision: dict[str, Any]

    @classmethod
    def from_card(cls, card: Any, split: str, name: str) -> "RecordedBaseline":
        m = card.metrics.get(split)
        if not isinstance(m, dict) or not isinstance(m.get("bacc"), dict):
            have = [k for k, v in card.metrics.items() if isinstance(v, dict) and "bacc" in v]
            raise EdgedermError(f"baseline card {name} records no {split!r} metrics to compare with (it has: {', '.join(have) or 'none'})")
        return cls(name=name, split=split, n=int(m.get("n", 0)), metrics=m, decision=dict(card.decision))


# -- the gate -------------------------------------------------------------------------------------
@dataclass
class GateResult:
    artifact: str
    reference: str
    passed: bool
    reasons: list[str]
    n: int
    n_lesions: int
    split: str
    views: list[str]
    decision_mode: str  # refit | argmax | card
    paired: bool
    tolerances: dict[str, Any]
    classes: list[str]
    support: dict[str, int]
    artifact_metrics: dict[str, Any] | None
    reference_metrics: dict[str, Any]
    artifact_decision: dict[str, Any] | None
    reference_decision: dict[str, Any]
    comparison: dict[str, Any]
    level: float = 0.95

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def summary(self) -> dict[str, Any]:
        """Compact form for the card and the export summary."""

        def pick(m: Mapping[str, Any] | None, key: str) -> Any:
            return None if not m or key not in m else {k: m[key].get(k) for k in ("value", "lo", "hi")}

        c = self.comparison
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "split": self.split,
            "n": self.n,
            "decision_mode": self.decision_mode,
            "bacc": pick(self.artifact_metrics, "bacc"),
            "mel_sensitivity": pick(self.artifact_metrics, "mel_sensitivity"),
            "mel_specificity": pick(self.artifact_metrics, "mel_specificity"),
            "reference_bacc": pick(self.reference_metrics, "bacc"),
            "reference_mel_sensitivity": pick(self.reference_metrics, "mel_sensitivity"),
            "agreement": c.get("agreement"),
            "argmax_agreement": c.get("argmax_agreement"),
            "max_prob_diff": c.get("max_prob_diff"),
            "bacc_diff": c.get("bacc_diff"),
            "mcnemar_p": (c.get("mcnemar") or {}).get("p_value"),
            "nonfinite": c.get("nonfinite", 0),
            "tolerances": self.tolerances,
        }

    def markdown(self, title: str | None = None) -> str:
        pct = f"{100 * self.level:g}%"
        lines = [f"## {title or self.artifact}: **{self.verdict}**", ""]
        lines.append(
            f"{self.split} split, n = {self.n} images ({self.n_lesions} lesions), TTA views: {len(self.views)}, "
            f"decision: {_mode_text(self.decision_mode)}; reference: {self.reference}"
            + ("" if self.paired else " (recorded metrics, unpaired)")
        )
        lines += ["", f"| model | BACC ({pct} CI) | MEL sens ({pct} CI) | MEL spec ({pct} CI) | agreement | max Δp | ΔBACC ({pct} CI) | McNemar p |",
                  "|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|"]
        rm, am, c = self.reference_metrics, self.artifact_metrics, self.comparison
        lines.append(f"| reference | {_ci(rm, 'bacc')} | {_ci(rm, 'mel_sensitivity')} | {_ci(rm, 'mel_specificity')} | — | — | — | — |")
        d = c.get("bacc_diff") or {}
        diff = "—" if d.get("diff") is None else f"{100 * d['diff']:+.1f} pp" + (
            f" ({100 * d['lo']:+.1f} to {100 * d['hi']:+.1f})" if d.get("lo") is not None else "")
        lines.append(
            f"| artifact | {_ci(am, 'bacc')} | {_ci(am, 'mel_sensitivity')} | {_ci(am, 'mel_specificity')} | "
            f"{_num(c.get('agreement'))} | {_num(c.get('max_prob_diff'))} | {diff} | {_num((c.get('mcnemar') or {}).get('p_value'))} |"
        )
        if self.decision_mode == "refit":
            def thr(d: Mapping[str, Any] | None) -> str:
                t = (d or {}).get("thresholds") or {}
                return ", ".join(f"{k} ≥ {v:.4f}" for k, v in t.items()) or "argmax (no threshold met its floors)"

            lines += ["", f"Thresholds re-fitted on {self.split}: reference {thr(self.reference_decision)}; "
                          f"artifact {thr(self.artifact_decision) if self.artifact_decision else 'n/a'}."]
        lines += ["", "| class | n | reference recall | artifact recall | Δ (pp) | tolerance (pp) |", "|---|---:|:---:|:---:|:---:|:---:|"]
        for cls in self.classes:
            key = f"sensitivity/{cls}"
            r = (rm.get(key) or {}).get("value")
            a = ((am or {}).get(key) or {}).get("value")
            delta = "—" if r is None or a is None else f"{100 * (a - r):+.1f}"
            lines.append(f"| {cls} | {self.support.get(cls, 0)} | {_num(r)} | {_num(a)} | {delta} | {self.tolerances['per_class_pp'].get(cls, self.tolerances['class_pp'])} |")
        lines.append("")
        if self.reasons:
            lines += ["Failed rules:", ""] + [f"- {r}" for r in self.reasons]
        else:
            t = self.tolerances
            lines.append(f"All rules hold: BACC drop ≤ {t['bacc_pp']} pp, MEL sensitivity drop ≤ {t['mel_sens_pp']} pp, "
                         f"no class recall drop > {t['class_pp']} pp.")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path, *, title: str | None = None) -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "gate.json", self.to_dict())
        write_text_atomic(out / "gate.md", f"# Accuracy gate\n\n{self.markdown(title)}")
        return out / "gate.json", out / "gate.md"


def _mode_text(mode: str) -> str:
    return {"refit": "clinical thresholds re-fitted per model on this split (multi-class rule)",
            "argmax": "argmax", "card": "each card's own decision rule"}.get(mode, mode)


def threshold_config(decision: Mapping[str, Any], override: Mapping[str, Any] | None = None) -> Any:
    """The ``ThresholdConfig`` to re-fit with: ``override`` (e.g. the run's recipe), else the
    card's recorded targets (in priority order) and criterion with the default fallback chain."""
    from ..thresholds import TargetSpec, ThresholdConfig

    if override:
        return ThresholdConfig.from_dict(override)
    targets = decision.get("targets") or {}
    if not targets:
        return None
    return ThresholdConfig(
        targets=[TargetSpec(c, v["min_sens"], v["min_spec"]) for c, v in targets.items()],
        criterion=str(decision.get("criterion", "margin")),
    )


def _melanoma(classes: Sequence[str]) -> str | None:
    folded = {c.casefold(): c for c in classes}
    for name in DEFAULT_MELANOMA:
        if name.casefold() in folded:
            return folded[name.casefold()]
    return None


def _metrics(p: Predictions, y_pred: np.ndarray, *, n_boot: int, seed: int) -> dict[str, Any]:
    wanted = ["bacc", "accuracy"]
    if _melanoma(p.classes):
        wanted += ["mel_sensitivity", "mel_specificity"]
    wanted += [f"sensitivity/{c}" for c in p.classes] + [f"specificity/{c}" for c in p.classes]
    return bootstrap_ci(p.y, p.probs, p.classes, groups=p.groups, y_pred=y_pred, n_boot=n_boot, seed=seed, metrics=wanted)


def _decision(p: Predictions, mode: str, cfg: Any) -> dict[str, Any]:
    if mode == "argmax":
        return {"rule": "argmax"}
    if mode == "card":
        return dict(p.decision)
    from ..thresholds import calibrate

    return calibrate(p.y, p.probs, p.classes, cfg, calibrated_on={"by": "edgederm gate", "model": p.name}).decision


def decision_mode(reference_decision: Mapping[str, Any], *, refit: bool, thresholds: Mapping[str, Any] | None = None) -> tuple[str, Any]:
    """How both models decide in the gate: ``argmax`` if the reference does, else ``refit``
    (thresholds re-fitted per model with the returned ThresholdConfig) or ``card``."""
    if reference_decision.get("rule", "argmax") == "argmax":
        return "argmax", None
    if not refit:
        return "card", None
    cfg = threshold_config(reference_decision, thresholds)
    return ("refit", cfg) if cfg is not None else ("card", None)


def reference_metrics(p: Predictions, *, refit: bool = True, thresholds: Mapping[str, Any] | None = None,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The reference's own gate metrics (as ``compare`` computes them for it)."""
    mode, cfg = decision_mode(p.decision, refit=refit, thresholds=thresholds)
    return _metrics(p, decide(p.probs, p.classes, _decision(p, mode, cfg)), n_boot=n_boot, seed=seed)


def compare(
    artifact: Predictions,
    reference: Predictions | RecordedBaseline,
    *,
    tolerances: Tolerances | None = None,
    refit: bool = True,
    thresholds: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    split: str = "val",
) -> GateResult:
    """Gate ``artifact`` against ``reference`` (predictions on the same images, or recorded
    metrics). ``refit``: re-fit clinical thresholds per model (only legitimate on validation);
    ``thresholds``: a ThresholdConfig dict to re-fit with (default: the reference card's)."""
    tol = tolerances or Tolerances()
    paired = isinstance(reference, Predictions)
    ref_decision = dict(reference.decision)
    mode, cfg = decision_mode(ref_decision, refit=refit, thresholds=thresholds)

    if paired:
        assert isinstance(reference, Predictions)
        common = [i for i in reference.image_ids if i in set(artifact.image_ids)]
        if not common:
            raise EdgedermError("the artifact and the reference share no scored images")
        if reference.classes != artifact.classes:
            raise EdgedermError(f"class lists differ: reference {reference.classes}, artifact {artifact.classes}")
        ref, art = reference.subset(common), artifact.subset(common)
        if ref.n_nonfinite:
            raise EdgedermError(f"the reference {ref.name} gives non-finite outputs on {ref.n_nonfinite} images: it cannot be a baseline")
    else:
        art, ref = artifact, None
        assert isinstance(reference, RecordedBaseline)
        if reference.n and reference.n != len(art.y):
            raise EdgedermError(
                f"baseline {reference.name} recorded its {reference.split} metrics on n={reference.n} images, "
                f"but this evaluation set has {len(art.y)}: not the same evaluation set"
            )

    classes = art.classes
    support = {c: int((art.y == k).sum()) for k, c in enumerate(classes)}
    n_lesions = len(set(art.groups))
    reasons: list[str] = []
    comparison: dict[str, Any] = {"nonfinite": art.n_nonfinite}

    if ref is not None:
        ref_dec = _decision(ref, mode, cfg)
        ref_pred = decide(ref.probs, classes, ref_dec)
        ref_metrics = _metrics(ref, ref_pred, n_boot=n_boot, seed=seed)
    else:
        assert isinstance(reference, RecordedBaseline)
        ref_dec, ref_pred = ref_decision, None
        ref_metrics = {k: v for k, v in reference.metrics.items() if isinstance(v, dict) and "value" in v}

    art_metrics: dict[str, Any] | None = None
    art_dec: dict[str, Any] | None = None
    if art.n_nonfinite:
        reasons.append(f"non-finite outputs (NaN/Inf) on {art.n_nonfinite} of {len(art.y)} images")
    else:
        art_dec = _decision(art, mode, cfg) if mode != "card" else dict(art.decision)
        art_pred = decide(art.probs, classes, art_dec)
        art_metrics = _metrics(art, art_pred, n_boot=n_boot, seed=seed)
        if ref is not None and ref_pred is not None:
            comparison.update(
                agreement=float(np.mean(art_pred == ref_pred)),
                argmax_agreement=float(np.mean(art.probs.argmax(1) == ref.probs.argmax(1))),
                max_prob_diff=float(np.abs(art.probs - ref.probs).max()),
                mean_prob_diff=float(np.abs(art.probs - ref.probs).mean()),
                bacc_diff=_diff(paired_bootstrap(ref.y, ref_pred, art_pred, classes, groups=ref.groups, metric="bacc", n_boot=n_boot, seed=seed)),
                mcnemar=mcnemar(ref.y, ref_pred, art_pred),
            )
            if _melanoma(classes) and support[_melanoma(classes)]:  # type: ignore[index]
                comparison["mel_sens_diff"] = _diff(paired_bootstrap(
                    ref.y, ref_pred, art_pred, classes, groups=ref.groups, metric="mel_sensitivity", n_boot=n_boot, seed=seed))
        reasons += _rules(ref_metrics, art_metrics, classes, support, tol)
        if tol.min_agreement is not None and comparison.get("agreement") is not None and comparison["agreement"] < tol.min_agreement - _EPS:
            reasons.append(f"top-1 agreement with the reference {comparison['agreement']:.3f} < {tol.min_agreement:.3f}")

    return GateResult(
        artifact=artifact.name, reference=reference.name, passed=not reasons, reasons=reasons, n=len(art.y),
        n_lesions=n_lesions, split=split, views=list(art.views), decision_mode=mode, paired=paired,
        tolerances=tol.to_dict(), classes=list(classes), support=support, artifact_metrics=art_metrics,
        reference_metrics=ref_metrics, artifact_decision=art_dec, reference_decision=ref_dec, comparison=comparison,
    )


def _diff(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: d.get(k) for k in ("a", "b", "diff", "lo", "hi", "p_value", "n_used")}


def _value(m: Mapping[str, Any] | None, key: str) -> float | None:
    e = (m or {}).get(key)
    return None if not isinstance(e, Mapping) else e.get("value")


def _rules(ref: Mapping[str, Any], art: Mapping[str, Any], classes: Sequence[str], support: Mapping[str, int], tol: Tolerances) -> list[str]:
    reasons: list[str] = []
    r, a = _value(ref, "bacc"), _value(art, "bacc")
    if r is not None and a is not None and 100 * (r - a) > tol.bacc_pp + _EPS:
        reasons.append(f"BACC dropped {100 * (r - a):.1f} pp ({r:.3f} → {a:.3f}); tolerance {tol.bacc_pp:g} pp")
    mel = _melanoma(classes)
    r, a = _value(ref, "mel_sensitivity"), _value(art, "mel_sensitivity")
    if mel and r is not None and a is not None and 100 * (r - a) > tol.mel_sens_pp + _EPS:
        n = support.get(mel, 0)
        reasons.append(
            f"melanoma sensitivity dropped {100 * (r - a):.1f} pp ({r:.3f} → {a:.3f}, "
            f"{round(r * n)}/{n} → {round(a * n)}/{n} melanomas); tolerance {tol.mel_sens_pp:g} pp"
        )
    for cls in classes:
        n = support.get(cls, 0)
        if n < max(1, tol.min_class_support):
            continue
        r, a = _value(ref, f"sensitivity/{cls}"), _value(art, f"sensitivity/{cls}")
        t = tol.for_class(cls)
        if r is not None and a is not None and 100 * (r - a) > t + _EPS:
            reasons.append(
                f"{cls} recall dropped {100 * (r - a):.1f} pp ({round(r * n)}/{n} → {round(a * n)}/{n} images); tolerance {t:g} pp"
            )
    return reasons


# -- reports --------------------------------------------------------------------------------------
def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{float(x):.{digits}f}"


def _ci(m: Mapping[str, Any] | None, key: str) -> str:
    e = (m or {}).get(key)
    if not isinstance(e, Mapping) or e.get("value") is None:
        return "n/a"
    if e.get("lo") is None or e.get("hi") is None:
        return _num(e["value"])
    return f"{_num(e['value'])} [{_num(e['lo'])}, {_num(e['hi'])}]"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """``| target | size | BACC [CI] | MEL sens [CI] | agreement | verdict |`` for an export run.

    Each row: ``target``, ``size_bytes``, ``verdict`` and, when gated, ``gate`` (a
    ``GateResult.summary()``); the reference row has ``reference`` metrics instead.
    """
    lines = ["| target | size | BACC [95% CI] | MEL sens [95% CI] | agreement | verdict |", "|---|---:|:---:|:---:|:---:|---|"]
    for row in rows:
        g = row.get("gate") or {}
        m = {k: g.get(k) for k in ("bacc", "mel_sensitivity")} if g else (row.get("metrics") or {})
        agree = g.get("agreement") if g else row.get("agreement")
        lines.append(f"| {row['target']} | {_size(row.get('size_bytes'))} | {_ci(m, 'bacc')} | {_ci(m, 'mel_sensitivity')} | "
                     f"{_num(agree) if agree is not None else '—'} | {row.get('verdict', '')} |")
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


# -- the stand-alone CI gate ----------------------------------------------------------------------
def run_gate(
    artifact: str | Path,
    baseline: str | Path,
    *,
    data: str | Path | None = None,
    fmt: str | None = None,
    split_file: str | Path | None = None,
    split: str | None = "val",
    tolerances: Tolerances | None = None,
    refit: bool | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    tta: bool | Sequence[str] | None = None,
    threads: int | None = None,
    out_dir: str | Path | None = None,
) -> GateResult:
    """``edgederm gate``: ARTIFACT against a baseline artifact (both run) or a baseline card's
    recorded metrics, on one evaluation set (a split of the data, or all of it with
    ``split='all'``). ``refit`` defaults to True on the validation split only (thresholds may
    only be fitted on validation); elsewhere each card's own decision rule is applied."""
    from ..card import load_card
    from .context import load_split_index

    art_path, base_path = Path(artifact), Path(baseline)
    for p, what in ((art_path, "artifact"), (base_path, "baseline")):
        if not p.exists():
            raise EdgedermError(f"{what} not found: {p}")
    art_pred = _load_with_backend(art_path, threads)
    recorded = base_path.name.endswith(".json")
    base_card = load_card(base_path) if recorded else None
    base_pred = None if recorded else _load_with_backend(base_path, threads)
    card = art_pred.card
    source_card = card if card.data.get("root") or data else (base_card or base_pred.card)  # type: ignore[union-attr]
    split_name = None if split in (None, "all") else split
    index = load_split_index(source_card, split_name, data=data, fmt=fmt, split_file=split_file,
                             run_dir=_run_dir_of(source_card))
    label = split_name or "all"
    if refit is None:
        refit = split_name == "val"
    art = predict(art_pred, index, tta=tta, name=art_path.name)
    if recorded:
        assert base_card is not None
        reference: Predictions | RecordedBaseline = RecordedBaseline.from_card(base_card, label, base_path.name)
    else:
        assert base_pred is not None
        reference = predict(base_pred, index, tta=tta, name=base_path.name)
    result = compare(art, reference, tolerances=tolerances, refit=refit, n_boot=n_boot, seed=seed, split=label)
    result.write(out_dir if out_dir is not None else art_path.parent, title=art_path.name)
    return result


def _run_dir_of(card: Any) -> Path | None:
    sf = card.data.get("split_file")
    return Path(sf).parent if sf else None


def _load_with_backend(path: Path, threads: int | None) -> Predictor:
    from ..runtime import load

    ensure_backend(path)
    return load(path, threads=threads) if threads else load(path)


def ensure_backend(path_or_format: str | Path) -> None:
    """Import the runtime backend for a format that is not registered yet (backends of optional
    toolkits live in modules the runtime package may not import by default)."""
    import importlib

    from ..runtime.registry import BACKENDS

    s = str(path_or_format).lower()
    wanted = {".xml": "openvino", ".tflite": "tflite", ".engine": "tensorrt", ".plan": "tensorrt"}
    fmt = next((f for suf, f in wanted.items() if s.endswith(suf)), s if s in ("openvino", "tflite", "tensorrt") else None)
    if fmt is None or fmt in BACKENDS:
        return
    module = "edgederm.export.tensorrt" if fmt == "tensorrt" else f"edgederm.runtime.{fmt}_backend"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
