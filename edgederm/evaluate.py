"""Evaluate any artifact on a data set through the one runtime: metrics with lesion-level CIs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from .decision import decide
from .data.records import DatasetIndex, Record, Skipped
from .errors import DataError, ImageError
from .metrics import bootstrap_ci, classification_report
from .progress import progress_bar
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


def _decoded(records: Sequence[Record], predictor: Predictor, kept: list[Record], skipped: list[Skipped],
             workers: int = 0, bar: Any = None) -> Iterator[Image.Image]:
    from .predict import ordered_map

    def decode(r: Record) -> Image.Image | ImageError:
        try:
            return predictor.load_image(r.ref)
        except ImageError as e:
            return e

    for r, img in zip(records, ordered_map(decode, records, workers, ahead=16 + 2 * workers)):
        if bar is not None:
            bar.update(1)
        if isinstance(img, ImageError):
            skipped.append(Skipped(r.image_id, str(img)))
            log.warning("skipped: %s", img)
            continue
        kept.append(r)
        yield img


def predict_index(
    predictor: Predictor,
    index: DatasetIndex,
    *,
    tta: bool | Sequence[str] | None = None,
    batch_size: int = 16,
    per_member: bool = False,
    workers: int = 0,
    progress: bool | None = None,
) -> tuple[list[Record], list[Skipped], np.ndarray | list[np.ndarray]]:
    """Run the predictor over ``index``: (kept records, skipped, probs or per-member probs).

    ``workers``: decode threads (0: decode in this thread). ``progress``: the shared progress bar
    (None: on a terminal, for more than a handful of images)."""
    predictor.card.check_classes(index.classes, what=f"data set {index.name!r}")
    if len(index) == 0:
        raise DataError(f"data set {index.name!r} has no images to evaluate")
    kept: list[Record] = []
    skipped: list[Skipped] = []
    # Not left on screen: the pipeline predicts several sets in a row and prints its own summary.
    with progress_bar(len(index.records), f"predict {index.name}", force=progress, leave=False) as bar:
        images = _decoded(index.records, predictor, kept, skipped, workers, bar)
        if per_member:
            out: np.ndarray | list[np.ndarray] = predictor.member_probabilities(images, tta=tta, batch_size=batch_size)
        else:
            out = predictor.predict_proba(images, tta=tta, batch_size=batch_size)
    if not kept:
        raise DataError(f"none of the {len(index)} images of {index.name!r} could be read")
    return kept, skipped, out


def score(
    index: DatasetIndex,
    kept: Sequence[Record],
    probs: np.ndarray,
    decision: dict[str, Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    skipped: Sequence[Skipped] = (),
    views: Sequence[str] = (),
) -> EvalResult:
    """Metrics (with lesion-level CIs) of given probabilities under a decision rule."""
    lookup = {c: i for i, c in enumerate(index.classes)}
    y_true = np.array([lookup[r.label] for r in kept])
    y_pred = decide(probs, index.classes, decision)
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
        skipped=list(skipped),
        views=list(views),
    )


def evaluate(
    predictor: Predictor,
    index: DatasetIndex,
    *,
    tta: bool | Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    workers: int = 0,
    progress: bool | None = None,
) -> EvalResult:
    """Predict every image of ``index`` and score it (unreadable images are skipped and counted)."""
    kept, skipped, probs = predict_index(predictor, index, tta=tta, batch_size=batch_size, workers=workers, progress=progress)
    assert isinstance(probs, np.ndarray)
    return score(
        index, kept, probs, predictor.card.decision, n_boot=n_boot, seed=seed, skipped=skipped, views=predictor.views(tta)
    )
