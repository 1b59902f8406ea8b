"""The accuracy gate: does an exported artifact still do the clinical job of its FP32 reference?

Both models are run through the one runtime (``edgederm.runtime.load``: the card's preprocessing
and TTA views) on the same lesion-disjoint images (the **validation** split in ``export``) and
each is judged under **the decision rule its own card ships with** — the rule a device will run.
Nothing is re-fitted for the verdict: a broken shipped rule (e.g. a melanoma threshold of 0.0001)
fails like broken weights do.

**The rule** (docs/gate.md; false-fail / false-pass rates by simulation: bench/gate_simulation.py).
The comparison is paired: the same images, the reference's decision and the artifact's.

* *Flips, per class.* For every class, count the images of that class the reference gets right
  and the artifact gets wrong ("lost"). The artifact may lose at most
  ``max(flips, floor(pp × n_class))`` of them — ``mel_flips``/``mel_sens_pp`` for melanoma (1
  image / 2 pp), ``class_flips``/``class_pp`` for every other class (1 image / 5 pp). On a class of
  4 images one flip is 25 pp, so a percentage-point rule there is a rule against any flip; counting
  flips is what such a class can support, and large classes get their percentage back.
* *BACC.* It fails when the drop exceeds ``bacc_pp`` *and* the paired lesion-level bootstrap CI of
  the difference lies wholly below 0, i.e. the drop is a real one and not one image of a rare class
  (those are judged by the flip rule above).
* *Agreement.* The decisions must agree with the reference's on ≥ ``min_agreement`` (0.97) of the
  images — a label-free check: an export that changes 3 % of the calls is not a faithful copy,
  whatever the labels of those images. Non-finite outputs (NaN/Inf, e.g. FP16 overflow) fail
  outright.
* *Label-free fidelity* (``fidelity_data``: any folder of images not used for training). The
  artifact must keep ≥ ``fidelity_agreement`` of the reference's decisions and ≥
  ``fidelity_mel_kept`` of its melanoma calls; each comes with an exact (Clopper–Pearson) CI,
  which thousands of unlabelled images make tight where a few hundred labelled ones cannot.

**Refusal** (exit 2, ``InsufficientData``): fewer than ``min_images`` images, a class of the
reference absent or with fewer than ``min_class_support`` images, or a fidelity pool of fewer than
``min_fidelity_images``. The user may lower these explicitly; the verdict then records them.

Class lists are compared in every mode: a different set of classes is bad input (exit 2); the same
classes in another order are aligned by name, so an artifact whose card names its outputs wrongly
is judged on what its outputs mean under those names — and fails.

``edgederm gate ARTIFACT --baseline CARD_OR_ARTIFACT`` uses the same machinery as a CI
accuracy-regression gate: against a baseline artifact (both are run, paired), or against the
metrics a baseline card recorded on the same evaluation set (unpaired: per-class recall drops
against the same flip budgets, BACC against the card's value). Exit codes: 0 pass, 1 gate failed,
2 bad input or too little data to certify.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.records import DatasetIndex
from ..decision import decide
from ..errors import EdgedermError
from ..fsutil import jsonable, write_json_atomic, write_text_atomic
from ..metrics import DEFAULT_MELANOMA, bootstrap_ci, format_ci_entry, mcnemar, paired_bootstrap
from ..runtime.base import Predictor

log = logging.getLogger(__name__)

_EPS = 1e-9
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class InsufficientData(EdgedermError):
    """Too few images (or a class too rare) for the gate to certify anything: exit 2."""


# -- configuration --------------------------------------------------------------------------------
@dataclass
class Tolerances:
    """How much worse than the reference an artifact may be, and how much data a verdict needs."""

    bacc_pp: float = 1.0
    mel_sens_pp: float = 2.0
    class_pp: float = 5.0
    per_class_pp: dict[str, float] = field(default_factory=dict)  # overrides class_pp
    mel_flips: int = 1  # melanomas the artifact may lose whatever the class size
    class_flips: int = 1  # the same for every other class
    min_agreement: float | None = 0.97  # top-1 agreement of the decisions with the reference (None: off)
    min_images: int = 50
    min_class_support: int = 3
    fidelity_agreement: float = 0.98
    fidelity_mel_kept: float = 0.98
    min_fidelity_images: int = 100

    def __post_init__(self) -> None:
        for name in ("bacc_pp", "mel_sens_pp", "class_pp", "fidelity_agreement", "fidelity_mel_kept"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
                raise EdgedermError(f"tolerance {name} must be a non-negative number, got {v!r}")
        for name in ("mel_flips", "class_flips", "min_images", "min_class_support", "min_fidelity_images"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise EdgedermError(f"gate setting {name} must be a non-negative integer, got {v!r}")
        for name in ("fidelity_agreement", "fidelity_mel_kept"):
            if getattr(self, name) > 1:
                raise EdgedermError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise EdgedermError(f"min_agreement must be in [0, 1], got {self.min_agreement}")

    def for_class(self, cls: str) -> float:
        for k, v in self.per_class_pp.items():
            if k.casefold() == cls.casefold():
                return float(v)
        return float(self.class_pp)

    def budget(self, cls: str, n: int, *, melanoma: bool) -> int:
        """Images of class ``cls`` (``n`` of them) the artifact may lose: a flip count on small
        classes, a percentage of the class on large ones."""
        pp, flips = (self.mel_sens_pp, self.mel_flips) if melanoma else (self.for_class(cls), self.class_flips)
        return max(int(flips), int(math.floor(pp / 100.0 * n + _EPS)))

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

    def aligned_to(self, classes: Sequence[str]) -> "Predictions":
        """The same predictions with columns (and labels) in the order of ``classes``, matched
        by name: the names are the card's statement of what each output means."""
        order = [self.classes.index(c) for c in classes]
        remap = np.array([list(classes).index(c) for c in self.classes])
        return replace(self, classes=list(classes), probs=self.probs[:, order], y=remap[self.y])


def _index_in_order(index: DatasetIndex, classes: Sequence[str]) -> DatasetIndex:
    """``index`` with its class list in another order (records keep their label names)."""
    if list(index.classes) == list(classes):
        return index
    return replace(index, classes=list(classes))


def predict(predictor: Predictor, index: DatasetIndex, *, tta: bool | Sequence[str] | None = None,
            batch_size: int = 16, name: str | None = None) -> Predictions:
    """Run ``predictor`` over ``index`` through the runtime (card preprocessing and TTA).

    A card listing the index's classes in another order is run in its own order (and aligned
    by name later, in ``compare``); another set of classes is a one-line error."""
    from ..evaluate import predict_index

    classes = list(predictor.card.classes)
    if sorted(classes) == sorted(index.classes):
        index = _index_in_order(index, classes)
    kept, skipped, probs = predict_index(predictor, index, tta=tta, batch_size=batch_size)
    assert isinstance(probs, np.ndarray)
    lookup = {c: i for i, c in enumerate(index.classes)}
    return Predictions(
        name=name or predictor.path.name,
        classes=list(index.classes),
        image_ids=[r.image_id for r in kept],
        y=np.array([lookup[r.label] for r in kept], dtype=int),
        groups=[r.group for r in kept],
        probs=np.asarray(probs, dtype=np.float64),
        decision=dict(predictor.card.decision),
        views=predictor.views(tta),
        skipped=len(skipped),
    )


@dataclass
class PoolPredictions:
    """One model's probabilities on an unlabelled fidelity pool."""

    name: str
    classes: list[str]
    image_ids: list[str]
    probs: np.ndarray
    decision: dict[str, Any]
    skipped: int = 0

    def aligned_to(self, classes: Sequence[str]) -> "PoolPredictions":
        order = [self.classes.index(c) for c in classes]
        return replace(self, classes=list(classes), probs=self.probs[:, order])


def pool_images(folders: str | Path | Sequence[str | Path], *,
                exclude_ids: set[str] | frozenset[str] = frozenset()) -> tuple[list[Path], int]:
    """Image files under ``folders`` (recursive, sorted, each file once), minus those whose image
    id (file stem, without ISIC's ``_downsampled``) is in ``exclude_ids`` — the training images;
    returns (files, number excluded)."""
    import glob

    roots = [folders] if isinstance(folders, (str, Path)) else list(folders)
    files: list[Path] = []
    for entry in roots:
        if any(ch in str(entry) for ch in "*?["):  # a glob, e.g. ph2/**/*_Dermoscopic_Image/*.jpg (not the masks)
            hits = sorted(Path(h) for h in glob.glob(str(entry), recursive=True))
            hits = [h for h in hits if h.is_file() and h.suffix.lower() in IMAGE_SUFFIXES]
            if not hits:
                raise EdgedermError(f"fidelity pool {entry}: the pattern matches no image")
            files += hits
            continue
        root = Path(entry)
        if not root.is_dir():
            raise EdgedermError(f"fidelity pool {root} is not a folder of images (or a glob pattern)")
        files += sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                        and not any(part.startswith(".") for part in p.relative_to(root).parts))
    files = list(dict.fromkeys(p.resolve() for p in files))
    kept = [p for p in files if _image_id(p) not in exclude_ids]
    return kept, len(files) - len(kept)


def _image_id(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_downsampled")] if stem.endswith("_downsampled") else stem


def predict_pool(predictor: Predictor, files: Sequence[Path], *, tta: bool | Sequence[str] | None = None,
                 batch_size: int = 32, name: str | None = None) -> PoolPredictions:
    """Probabilities of ``predictor`` on unlabelled images; unreadable files are skipped (counted)."""
    from tqdm.auto import tqdm

    from ..errors import ImageError

    ids: list[str] = []
    chunks: list[np.ndarray] = []
    batch: list[Any] = []
    skipped = 0

    def flush() -> None:
        if batch:
            chunks.append(np.asarray(predictor.predict_proba(batch, tta=tta, batch_size=batch_size), dtype=np.float64))
            batch.clear()

    for f in tqdm(files, desc=f"fidelity {name or predictor.path.name}", unit="img", leave=False, disable=None):
        try:
            batch.append(predictor.load_image(f))
        except ImageError as e:
            skipped += 1
            log.warning("fidelity pool: skipped %s", e)
            continue
        ids.append(str(f))
        if len(batch) == batch_size:
            flush()
    flush()
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(predictor.classes)))
    return PoolPredictions(name or predictor.path.name, list(predictor.classes), ids, probs,
                           dict(predictor.card.decision), skipped)


@dataclass
class RecordedBaseline:
    """A baseline known only by the metrics its card recorded on an evaluation set."""

    name: str
    split: str
    n: int
    metrics: dict[str, Any]  # bootstrap_ci-style entries: {"bacc": {"value", "lo", "hi"}, ...}
    decision: dict[str, Any]
    classes: list[str] = field(default_factory=list)

    @classmethod
    def from_card(cls, card: Any, split: str, name: str) -> "RecordedBaseline":
        m = card.metrics.get(split)
        if not isinstance(m, dict) or not isinstance(m.get("bacc"), dict):
            have = [k for k, v in card.metrics.items() if isinstance(v, dict) and "bacc" in v]
            raise EdgedermError(f"baseline card {name} records no {split!r} metrics to compare with (it has: {', '.join(have) or 'none'})")
        return cls(name=name, split=split, n=int(m.get("n", 0)), metrics=m, decision=dict(card.decision),
                   classes=list(card.classes))


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
    decision_mode: str  # "card": each model under its own card's decision rule
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
        return jsonable(asdict(self), nonfinite_to_null=True)

    def summary(self) -> dict[str, Any]:
        """Compact form for the card and the export summary."""

        def pick(m: Mapping[str, Any] | None, key: str) -> Any:
            return None if not m or key not in m else {k: m[key].get(k) for k in ("value", "lo", "hi")}

        c = self.comparison
        fid = c.get("fidelity")
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
            "lost": {k: v["lost"] for k, v in (c.get("flips") or {}).items()},
            "fidelity": None if not fid else {k: fid.get(k) for k in ("n", "agreement", "mel_kept", "passed")},
            "nonfinite": c.get("nonfinite", 0),
            "thresholds": (self.artifact_decision or {}).get("thresholds"),
            "tolerances": self.tolerances,
        }

    def markdown(self, title: str | None = None) -> str:
        pct = f"{100 * self.level:g}%"
        lines = [f"## {title or self.artifact}: **{self.verdict}**", ""]
        lines.append(
            f"{self.split} split, n = {self.n} images ({self.n_lesions} lesions), TTA views: {len(self.views)}, "
            f"decision: each card's own rule ({_rule_text(self.reference_decision)} for the reference, "
            f"{_rule_text(self.artifact_decision)} for the artifact); reference: {self.reference}"
            + ("" if self.paired else " (recorded metrics, unpaired)")
        )
        if self.comparison.get("class_order_differs"):
            lines += ["", "The artifact's card lists the classes in another order; outputs were matched by class name."]
        lines += ["", f"| model | BACC [{pct} CI] | MEL sens [{pct} CI] | MEL spec [{pct} CI] | agreement | max Δp | ΔBACC [{pct} CI] | McNemar p |",
                  "|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|"]
        rm, am, c = self.reference_metrics, self.artifact_metrics, self.comparison
        lines.append(f"| reference | {_ci(rm, 'bacc')} | {_ci(rm, 'mel_sensitivity')} | {_ci(rm, 'mel_specificity')} | — | — | — | — |")
        d = c.get("bacc_diff") or {}
        diff = "—" if d.get("diff") is None else f"{_pp_ci(d)} pp"
        lines.append(
            f"| artifact | {_ci(am, 'bacc')} | {_ci(am, 'mel_sensitivity')} | {_ci(am, 'mel_specificity')} | "
            f"{_num(c.get('agreement'))} | {_num(c.get('max_prob_diff'))} | {diff} | {_num((c.get('mcnemar') or {}).get('p_value'))} |"
        )
        flips = c.get("flips") or {}
        lines += ["", "| class | n | reference correct | lost | gained | allowed to lose | reference recall | artifact recall |",
                  "|---|---:|---:|---:|---:|---:|:---:|:---:|"]
        for cls in self.classes:
            key = f"sensitivity/{cls}"
            r = (rm.get(key) or {}).get("value")
            a = ((am or {}).get(key) or {}).get("value")
            f = flips.get(cls) or {}
            lines.append(f"| {cls} | {self.support.get(cls, 0)} | {f.get('ref_correct', '—')} | {f.get('lost', '—')} | "
                         f"{f.get('gained', '—')} | {f.get('budget', '—')} | {_num(r)} | {_num(a)} |")
        fid = c.get("fidelity")
        if fid:
            lines += ["", _fidelity_markdown(fid)]
        lines.append("")
        if self.reasons:
            lines += ["Failed rules:", ""] + [f"- {r}" for r in self.reasons]
        else:
            t = self.tolerances
            lines.append(f"All rules hold: no class lost more than its allowance of the reference's correct calls "
                         f"(melanoma: max({t['mel_flips']}, {t['mel_sens_pp']:g}% of n); others: max({t['class_flips']}, "
                         f"{t['class_pp']:g}% of n)); no BACC drop over {t['bacc_pp']:g} pp with a paired CI excluding 0"
                         + ("; fidelity pool rules hold." if fid else "."))
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path, *, title: str | None = None) -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "gate.json", self.to_dict())
        write_text_atomic(out / "gate.md", f"# Accuracy gate\n\n{self.markdown(title)}")
        return out / "gate.json", out / "gate.md"


def _rule_text(decision: Mapping[str, Any] | None) -> str:
    if not decision:
        return "n/a"
    t = decision.get("thresholds") or {}
    if decision.get("rule", "argmax") == "argmax" or not t:
        return "argmax"
    return "thresholds " + ", ".join(f"{k} ≥ {float(v):.4f}" for k, v in t.items())


def _melanoma(classes: Sequence[str]) -> str | None:
    folded = {c.casefold(): c for c in classes}
    for name in DEFAULT_MELANOMA:
        if name.casefold() in folded:
            return folded[name.casefold()]
    return None


def _metrics(y: np.ndarray, probs: np.ndarray, groups: Sequence[str], classes: Sequence[str], y_pred: np.ndarray, *,
             n_boot: int, seed: int) -> dict[str, Any]:
    wanted = ["bacc", "accuracy"]
    if _melanoma(classes):
        wanted += ["mel_sensitivity", "mel_specificity"]
    wanted += [f"sensitivity/{c}" for c in classes] + [f"specificity/{c}" for c in classes]
    return bootstrap_ci(y, probs, list(classes), groups=list(groups), y_pred=y_pred, n_boot=n_boot, seed=seed, metrics=wanted)


def _decide(probs: np.ndarray, classes: Sequence[str], decision: Mapping[str, Any], who: str) -> np.ndarray:
    try:
        return decide(probs, list(classes), dict(decision))
    except (ValueError, TypeError, KeyError) as e:
        raise EdgedermError(f"the decision rule in the card of {who} cannot be applied: {e}") from None


def check_classes_match(reference: Sequence[str], artifact: Sequence[str], *, what: str = "artifact") -> bool:
    """Exit-2 error unless both cards name the same classes; True when only their order differs."""
    if list(reference) == list(artifact):
        return False
    if sorted(reference) != sorted(artifact):
        raise EdgedermError(f"class lists differ: reference {list(reference)}, {what} {list(artifact)}")
    return True


def certify_check(classes: Sequence[str], y: np.ndarray, tol: Tolerances, *, where: str = "the evaluation set") -> dict[str, int]:
    """Refuse (``InsufficientData``, exit 2) when the images cannot support a verdict; the support."""
    support = {c: int((np.asarray(y) == k).sum()) for k, c in enumerate(classes)}
    n = int(len(y))
    if n < tol.min_images:
        raise InsufficientData(f"{where} has {n} images; the gate needs at least {tol.min_images} to certify "
                               f"(lower it explicitly with --min-images)")
    thin = [f"{c} ({support[c]})" for c in classes if support[c] < max(tol.min_class_support, 1)]
    if thin:
        raise InsufficientData(f"{where} has too few images of {', '.join(thin)}: each class needs at least "
                               f"{max(tol.min_class_support, 1)} (lower it explicitly with --min-class-support)")
    return support


def _flips(y: np.ndarray, ref_pred: np.ndarray, art_pred: np.ndarray, classes: Sequence[str], tol: Tolerances) -> dict[str, dict[str, int]]:
    mel = _melanoma(classes)
    out: dict[str, dict[str, int]] = {}
    for k, c in enumerate(classes):
        m = y == k
        rc, ac = ref_pred[m] == k, art_pred[m] == k
        out[c] = {"n": int(m.sum()), "ref_correct": int(rc.sum()), "lost": int((rc & ~ac).sum()),
                  "gained": int((~rc & ac).sum()), "budget": tol.budget(c, int(m.sum()), melanoma=c == mel)}
    return out


def compare(
    artifact: Predictions,
    reference: Predictions | RecordedBaseline,
    *,
    tolerances: Tolerances | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    split: str = "val",
    fidelity: tuple[PoolPredictions, PoolPredictions] | None = None,
) -> GateResult:
    """Gate ``artifact`` against ``reference`` (predictions on the same images, or recorded
    metrics), each under its own card's decision rule. ``fidelity``: (artifact, reference)
    predictions on an unlabelled pool. Raises ``InsufficientData`` when the data cannot certify."""
    tol = tolerances or Tolerances()
    paired = isinstance(reference, Predictions)
    ref_classes = list(reference.classes) if reference.classes else list(artifact.classes)
    reordered = check_classes_match(ref_classes, artifact.classes)
    art = artifact.aligned_to(ref_classes) if reordered else artifact
    classes = ref_classes

    ref: Predictions | None = None
    if paired:
        assert isinstance(reference, Predictions)
        art_ids = set(art.image_ids)
        common = [i for i in reference.image_ids if i in art_ids]
        if not common:
            raise EdgedermError("the artifact and the reference share no scored images")
        ref, art = reference.subset(common), art.subset(common)
        if ref.n_nonfinite:
            raise EdgedermError(f"the reference {ref.name} gives non-finite outputs on {ref.n_nonfinite} images: it cannot be a baseline")
    else:
        assert isinstance(reference, RecordedBaseline)
        if reference.n and reference.n != len(art.y):
            raise EdgedermError(
                f"baseline {reference.name} recorded its {reference.split} metrics on n={reference.n} images, "
                f"but this evaluation set has {len(art.y)}: not the same evaluation set"
            )

    support = certify_check(classes, art.y, tol, where=f"the {split} split")
    n_lesions = len(set(art.groups))
    reasons: list[str] = []
    comparison: dict[str, Any] = {"nonfinite": art.n_nonfinite, "class_order_differs": reordered}
    mel = _melanoma(classes)

    if ref is not None:
        ref_dec = dict(ref.decision)
        ref_pred = _decide(ref.probs, classes, ref_dec, ref.name)
        ref_metrics = _metrics(ref.y, ref.probs, ref.groups, classes, ref_pred, n_boot=n_boot, seed=seed)
    else:
        assert isinstance(reference, RecordedBaseline)
        ref_dec, ref_pred = dict(reference.decision), None
        ref_metrics = {k: v for k, v in reference.metrics.items() if isinstance(v, dict) and "value" in v}

    art_metrics: dict[str, Any] | None = None
    art_dec = dict(art.decision)
    if art.n_nonfinite:
        reasons.append(f"non-finite outputs (NaN/Inf) on {art.n_nonfinite} of {len(art.y)} images")
    else:
        art_pred = _decide(art.probs, classes, art_dec, art.name)
        art_metrics = _metrics(art.y, art.probs, art.groups, classes, art_pred, n_boot=n_boot, seed=seed)
        if ref is not None and ref_pred is not None:
            bacc_diff = _diff(paired_bootstrap(ref.y, ref_pred, art_pred, classes, groups=ref.groups, metric="bacc", n_boot=n_boot, seed=seed))
            comparison.update(
                agreement=float(np.mean(art_pred == ref_pred)),
                argmax_agreement=float(np.mean(art.probs.argmax(1) == ref.probs.argmax(1))),
                max_prob_diff=float(np.abs(art.probs - ref.probs).max()),
                mean_prob_diff=float(np.abs(art.probs - ref.probs).mean()),
                bacc_diff=bacc_diff,
                mcnemar=mcnemar(ref.y, ref_pred, art_pred),
                flips=_flips(ref.y, ref_pred, art_pred, classes, tol),
            )
            if mel and support[mel]:
                comparison["mel_sens_diff"] = _diff(paired_bootstrap(
                    ref.y, ref_pred, art_pred, classes, groups=ref.groups, metric="mel_sensitivity", n_boot=n_boot, seed=seed))
            reasons += _paired_rules(comparison, ref_metrics, art_metrics, classes, mel, tol)
        else:
            reasons += _recorded_rules(ref_metrics, art_metrics, classes, support, mel, tol)
        if tol.min_agreement is not None and comparison.get("agreement") is not None and comparison["agreement"] < tol.min_agreement - _EPS:
            reasons.append(f"top-1 agreement with the reference {comparison['agreement']:.3f} < {tol.min_agreement:.3f}")

    if fidelity is not None:
        fid = fidelity_check(fidelity[0], fidelity[1], classes, tol)
        comparison["fidelity"] = fid
        reasons += fid["reasons"]

    return GateResult(
        artifact=artifact.name, reference=reference.name, passed=not reasons, reasons=reasons, n=len(art.y),
        n_lesions=n_lesions, split=split, views=list(art.views), decision_mode="card", paired=paired,
        tolerances=tol.to_dict(), classes=list(classes), support=support, artifact_metrics=art_metrics,
        reference_metrics=ref_metrics, artifact_decision=art_dec, reference_decision=ref_dec, comparison=comparison,
    )


def reference_metrics(p: Predictions, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The reference's own gate metrics, under its card's decision rule (as ``compare`` scores it)."""
    pred = _decide(p.probs, p.classes, p.decision, p.name)
    return _metrics(p.y, p.probs, p.groups, p.classes, pred, n_boot=n_boot, seed=seed)


def _diff(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: d.get(k) for k in ("a", "b", "diff", "lo", "hi", "p_value", "n_used")}


def _value(m: Mapping[str, Any] | None, key: str) -> float | None:
    e = (m or {}).get(key)
    return None if not isinstance(e, Mapping) else e.get("value")


def _paired_rules(c: Mapping[str, Any], ref: Mapping[str, Any], art: Mapping[str, Any], classes: Sequence[str],
                  mel: str | None, tol: Tolerances) -> list[str]:
    reasons: list[str] = []
    for cls in classes:
        f = c["flips"][cls]
        if f["lost"] > f["budget"]:
            what = "melanomas" if cls == mel else f"{cls} images"
            reasons.append(
                f"{cls}: lost {f['lost']} of the {f['ref_correct']} {what} the reference calls correctly "
                f"(gained {f['gained']}; {f['n']} in the split); allowed {f['budget']}"
            )
    d = c.get("bacc_diff") or {}
    if d.get("diff") is not None and -100 * d["diff"] > tol.bacc_pp + _EPS and d.get("hi") is not None and d["hi"] < 0:
        r, a = _value(ref, "bacc"), _value(art, "bacc")
        reasons.append(
            f"BACC dropped {-100 * d['diff']:.1f} pp ({r:.3f} → {a:.3f}), change {_pp_ci(d)} pp: "
            f"its paired 95% CI excludes 0; margin {tol.bacc_pp:g} pp"
        )
    return reasons


def _recorded_rules(ref: Mapping[str, Any], art: Mapping[str, Any], classes: Sequence[str], support: Mapping[str, int],
                    mel: str | None, tol: Tolerances) -> list[str]:
    """Unpaired: each class's recall may drop by its budget's worth of images; BACC may not drop
    by more than the margin with the artifact's whole CI below the recorded value."""
    reasons: list[str] = []
    for cls in classes:
        n = support.get(cls, 0)
        r, a = _value(ref, f"sensitivity/{cls}"), _value(art, f"sensitivity/{cls}")
        if r is None or a is None or not n:
            continue
        budget = tol.budget(cls, n, melanoma=cls == mel)
        lost = round((r - a) * n)
        if lost > budget:
            reasons.append(f"{cls}: recall {r:.3f} → {a:.3f}, {lost} fewer of {n} images than the recorded baseline; allowed {budget}")
    r, a = _value(ref, "bacc"), _value(art, "bacc")
    hi = ((art.get("bacc") or {}) if isinstance(art.get("bacc"), Mapping) else {}).get("hi")
    if r is not None and a is not None and 100 * (r - a) > tol.bacc_pp + _EPS and hi is not None and hi < r:
        reasons.append(f"BACC dropped {100 * (r - a):.1f} pp ({r:.3f} → {a:.3f}), the artifact's 95% CI [.., {hi:.3f}] "
                       f"lies below the recorded value; margin {tol.bacc_pp:g} pp")
    return reasons


# -- label-free fidelity --------------------------------------------------------------------------
def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float | None, float | None]:
    """Exact binomial CI of k/n (two-sided, level 1 − alpha)."""
    from scipy.stats import beta

    if n <= 0:
        return None, None
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _prop(k: int, n: int) -> dict[str, Any]:
    lo, hi = clopper_pearson(k, n)
    return {"k": int(k), "n": int(n), "value": (k / n) if n else None, "lo": lo, "hi": hi}


def fidelity_check(artifact: PoolPredictions, reference: PoolPredictions, classes: Sequence[str], tol: Tolerances) -> dict[str, Any]:
    """Agreement with the reference's decisions on an unlabelled pool, and for each class the
    share of the reference's calls the artifact keeps, with exact binomial CIs."""
    check_classes_match(classes, reference.classes, what="reference (fidelity pool)")
    if check_classes_match(classes, artifact.classes):
        artifact = artifact.aligned_to(classes)
    if reference.classes != list(classes):
        reference = reference.aligned_to(classes)
    common = set(artifact.image_ids) & set(reference.image_ids)
    a_rows = [i for i, x in enumerate(artifact.image_ids) if x in common]
    r_pos = {x: i for i, x in enumerate(reference.image_ids)}
    r_rows = [r_pos[artifact.image_ids[i]] for i in a_rows]
    n = len(a_rows)
    if n < tol.min_fidelity_images:
        raise InsufficientData(f"the fidelity pool has {n} readable images; at least {tol.min_fidelity_images} are needed "
                               f"(lower it explicitly with --min-fidelity-images)")
    ap, rp = artifact.probs[a_rows], reference.probs[r_rows]
    reasons: list[str] = []
    bad = int((~np.isfinite(ap)).any(axis=1).sum())
    if bad:
        reasons.append(f"fidelity pool: non-finite outputs on {bad} of {n} images")
        ap = np.nan_to_num(ap, nan=0.0, posinf=1.0, neginf=0.0)
    a_pred = _decide(ap, classes, artifact.decision, artifact.name)
    r_pred = _decide(rp, classes, reference.decision, reference.name)
    agree = _prop(int((a_pred == r_pred).sum()), n)
    kept = {c: _prop(int(((r_pred == k) & (a_pred == k)).sum()), int((r_pred == k).sum())) for k, c in enumerate(classes)}
    mel = _melanoma(classes)
    out: dict[str, Any] = {"n": n, "skipped": artifact.skipped, "agreement": agree, "kept": kept,
                           "mel_kept": kept.get(mel) if mel else None,
                           "max_prob_diff": float(np.abs(ap - rp).max()) if n else None,
                           "rules": {"agreement": tol.fidelity_agreement, "mel_kept": tol.fidelity_mel_kept}}
    if agree["value"] is not None and agree["value"] < tol.fidelity_agreement - _EPS:
        reasons.append(f"fidelity pool: agreement with the reference {format_ci_entry(agree, digits=4)} "
                       f"< {tol.fidelity_agreement:g} on {n} images")
    mk = kept.get(mel) if mel else None
    if mk and mk["n"] and mk["value"] < tol.fidelity_mel_kept - _EPS:
        reasons.append(f"fidelity pool: kept {mk['k']} of the reference's {mk['n']} melanoma calls "
                       f"({format_ci_entry(mk, digits=4)}, 95% CI) < {tol.fidelity_mel_kept:g}")
    out["reasons"] = reasons
    out["passed"] = not reasons
    return out


def _fidelity_markdown(fid: Mapping[str, Any]) -> str:
    a = fid["agreement"]
    lines = [f"Label-free fidelity on {fid['n']} unlabelled images: agreement with the reference's decisions "
             f"{format_ci_entry(a, digits=4)} (95% CI; rule ≥ {fid['rules']['agreement']:g}); "
             f"largest probability change {_num(fid.get('max_prob_diff'), 4)}.", "",
             "| reference's call | calls | kept by the artifact | kept [95% exact CI] |", "|---|---:|---:|:---:|"]
    for cls, k in fid["kept"].items():
        lines.append(f"| {cls} | {k['n']} | {k['k']} | {format_ci_entry(k, digits=4)} |")
    return "\n".join(lines)


# -- reports --------------------------------------------------------------------------------------
def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{float(x):.{digits}f}"


def _ci(m: Mapping[str, Any] | None, key: str) -> str:
    e = (m or {}).get(key)
    if not isinstance(e, Mapping) or e.get("value") is None:
        return "n/a"
    return format_ci_entry(e)


def _pp_ci(d: Mapping[str, Any]) -> str:
    """A paired BACC difference in percentage points: ``-1.2 [-3.0 to +0.4]``."""
    pp = {k: None if d.get(k) is None else 100 * d[k] for k in ("diff", "lo", "hi")}
    return format_ci_entry(pp, digits=1, key="diff", signed=True)


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """``| target | precision | size | BACC [CI] | MEL sens [CI] | agreement | MEL lost | fidelity | verdict |``
    for an export run.

    Each row: ``target``, ``size_bytes``, ``verdict``, the measured ``precision`` (with
    ``quantized_ops`` / ``compute_ops`` when counted) and, when gated, ``gate`` (a
    ``GateResult.summary()``); the reference row has ``reference`` metrics instead.
    """
    lines = ["| target | precision | size | BACC [95% CI] | MEL sens [95% CI] | agreement | melanomas lost | fidelity pool: agreement, MEL calls kept [95% CI] | verdict |",
             "|---|---|---:|:---:|:---:|:---:|:---:|:---:|---|"]
    for row in rows:
        g = row.get("gate") or {}
        m = {k: g.get(k) for k in ("bacc", "mel_sensitivity")} if g else (row.get("metrics") or {})
        agree = g.get("agreement") if g else row.get("agreement")
        lost = g.get("lost") or {}
        mel = _melanoma(list(lost)) if lost else None
        fid = g.get("fidelity") or {}
        if fid and fid.get("agreement"):
            a, k = fid["agreement"], fid.get("mel_kept") or {}
            fid_text = f"{_num(a.get('value'), 4)}, " + (
                f"{k.get('k')}/{k.get('n')} [{_num(k.get('lo'), 3)}–{_num(k.get('hi'), 3)}]" if k.get("n") else "no MEL calls")
        else:
            fid_text = "—"
        lines.append(f"| {row['target']} | {precision_text(row)} | {_size(row.get('size_bytes'))} | {_ci(m, 'bacc')} | {_ci(m, 'mel_sensitivity')} | "
                     f"{_num(agree) if agree is not None else '—'} | {lost.get(mel, '—') if mel else '—'} | {fid_text} | {row.get('verdict', '')} |")
    return "\n".join(lines)


def precision_text(row: Mapping[str, Any]) -> str:
    """``int8 (50/50 ops INT8)``, ``mixed (40/50 ops INT8)``, ``fp16``: the measured precision
    and, for a quantized artifact, its count of quantized compute ops."""
    p = row.get("precision")
    if not p:
        return "—"
    q, n = row.get("quantized_ops"), row.get("compute_ops")
    return f"{p} ({q}/{n} ops INT8)" if q and n else str(p)


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
    n_boot: int = 1000,
    seed: int = 0,
    tta: bool | Sequence[str] | None = None,
    threads: int | None = None,
    out_dir: str | Path | None = None,
    fidelity_data: str | Path | Sequence[str | Path] | None = None,
) -> GateResult:
    """``edgederm gate``: ARTIFACT against a baseline artifact (both run) or a baseline card's
    recorded metrics, on one evaluation set (a split of the baseline's data, or all of it with
    ``split='all'``), each under its own card's decision rule; ``fidelity_data`` adds the
    label-free rules on a folder of unlabelled images (paired baselines only)."""
    from ..card import load_card
    from .context import load_split_index

    art_path, base_path = Path(artifact), Path(baseline)
    for p, what in ((art_path, "artifact"), (base_path, "baseline")):
        if not p.exists():
            raise EdgedermError(f"{what} not found: {p}")
    tol = tolerances or Tolerances()
    recorded = base_path.name.endswith(".json")
    base_card = load_card(base_path) if recorded else None
    base_pred = None if recorded else _load_with_backend(base_path, threads)
    art_pred = _load_with_backend(art_path, threads)
    ref_card = base_card if base_card is not None else base_pred.card  # type: ignore[union-attr]
    check_classes_match(ref_card.classes, art_pred.card.classes)
    if recorded and fidelity_data is not None:
        raise EdgedermError("--fidelity-data needs a baseline model to run (an artifact or checkpoint), not a card")
    # The baseline defines the evaluation set: its data, its split, its class order.
    source_card = ref_card if (ref_card.data.get("root") or data) else art_pred.card
    split_name = None if split in (None, "all") else split
    index = load_split_index(source_card, split_name, data=data, fmt=fmt, split_file=split_file,
                             run_dir=_run_dir_of(source_card))
    label = split_name or "all"
    certify_check(index.classes, np.array(index.targets(), dtype=int), tol, where=f"the {label} split")
    log.info("gate: scoring %s on %d %s images", art_path.name, len(index), label)
    art = predict(art_pred, index, tta=tta, name=art_path.name)
    if recorded:
        assert base_card is not None
        reference: Predictions | RecordedBaseline = RecordedBaseline.from_card(base_card, label, base_path.name)
    else:
        assert base_pred is not None
        reference = predict(base_pred, index, tta=tta, name=base_path.name)
    fidelity = None
    if fidelity_data is not None:
        assert base_pred is not None
        files, excluded = pool_images(fidelity_data, exclude_ids=_train_ids(source_card, data, fmt, split_file))
        if excluded:
            log.info("fidelity pool: %d images of the training split left out", excluded)
        fidelity = (predict_pool(art_pred, files, tta=tta, name=art_path.name),
                    predict_pool(base_pred, files, tta=tta, name=base_path.name))
    result = compare(art, reference, tolerances=tol, n_boot=n_boot, seed=seed, split=label, fidelity=fidelity)
    result.write(out_dir if out_dir is not None else art_path.parent, title=art_path.name)
    return result


def _train_ids(card: Any, data: Any, fmt: Any, split_file: Any) -> set[str]:
    """Image ids of the card's training split (kept out of a fidelity pool), if it has one."""
    from .context import load_split_index

    try:
        return {r.image_id for r in load_split_index(card, "train", data=data, fmt=fmt, split_file=split_file,
                                                      run_dir=_run_dir_of(card)).records}
    except EdgedermError as e:
        log.info("fidelity pool: no training split to exclude (%s)", e)
        return set()


def _run_dir_of(card: Any) -> Path | None:
    sf = card.data.get("split_file")
    return Path(sf).parent if sf else None


def _load_with_backend(path: Path, threads: int | None) -> Predictor:
    from ..runtime import load

    return load(path, threads=threads) if threads else load(path)
