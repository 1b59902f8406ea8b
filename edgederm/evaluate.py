"""Evaluate any artifact on a data set through the one runtime: metrics with lesion-level CIs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from .data.images import load_image
from .data.records import DatasetIndex, Record, Skipped
from .errors import DataError, ImageError
from .metrics import bootstrap_ci, classification_report
from .runtime.base import Predictor

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    dataset: str
    classes: list[str]
    image_ids: list[str]
    groups: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    y_pred: np.ndarray
    report: dict[str, Any]
    ci: dict[str, Any]
    skipped: list[Skipped] = field(default_factory=list)
    views: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: point metrics, CIs, counts (no per-image arrays)."""
        return {
            "dataset": self.dataset,
            "n": int(len(self.y_true)),
            "skipped": len(self.skipped),
            "tta_views": self.views,
            "metrics": self.report,
            "ci": self.ci,
        }


def _decoded(records: Sequence[Record], draft: int, kept: list[Record], skipped: list[Skipped]) -> Iterator[Image.Image]:
    for r in records:
        try:
            img = load_image(r.ref, draft_size=draft)
        except ImageError as e:
            skipped.append(Skipped(r.image_id, str(e)))
            log.warning("skipped: %s", e)
            continue
        kept.append(r)
        yield img


def evaluate(
    predictor: Predictor,
    index: DatasetIndex,
    *,
    tta: bool | Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
) -> EvalResult:
    """Predict every image of ``index`` and score it (unreadable images are skipped and counted)."""
    predictor.card.check_classes(index.classes, what=f"data set {index.name!r}")
    if len(index) == 0:
        raise DataError(f"data set {index.name!r} has no images to evaluate")
    draft = 2 * max(max(h.spec.input_size) for h in predictor.heads())
    kept: list[Record] = []
    skipped: list[Skipped] = []
    probs = predictor.predict_proba(_decoded(index.records, draft, kept, skipped), tta=tta, batch_size=batch_size)
    if not kept:
        raise DataError(f"none of the {len(index)} images of {index.name!r} could be read")
    lookup = {c: i for i, c in enumerate(index.classes)}
    y_true = np.array([lookup[r.label] for r in kept])
    y_pred = predictor.decide(probs)
    groups = [r.group for r in kept]
    report = classification_report(y_true, probs, index.classes, y_pred=y_pred)
    ci = bootstrap_ci(y_true, probs, index.classes, groups=groups, y_pred=y_pred, n_boot=n_boot, seed=seed) if n_boot else {}
    return EvalResult(
        dataset=index.name,
        classes=list(index.classes),
        image_ids=[r.image_id for r in kept],
        groups=groups,
        y_true=y_true,
        probs=probs,
        y_pred=y_pred,
        report=report,
        ci=ci,
        skipped=skipped,
        views=predictor.views(tta),
    )
