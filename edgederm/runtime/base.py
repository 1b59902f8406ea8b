"""The predictor interface every backend implements.

A backend only has to implement ``forward`` (a preprocessed batch → raw outputs). Everything
clinical — decoding, the card's preprocessing, TTA views, softmax, ensemble weighting and the
decision rule — is done here once, for every format.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ..card import ArtifactCard
from ..decision import decide
from ..preprocess import PreprocessSpec
from ..tta import apply_view, check_views

log = logging.getLogger(__name__)

ImageLike = Image.Image | str | Path


@dataclass
class Head:
    """One input pipeline of a predictor: a spec, a weight, and the function that runs it."""

    spec: PreprocessSpec
    weight: float
    forward: Callable[[np.ndarray], np.ndarray]


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Images → class probabilities → decisions, as the card prescribes."""

    format: str = "?"

    def __init__(self, path: Path, card: ArtifactCard) -> None:
        self.path = Path(path)
        self.card = card

    # -- backend hooks -------------------------------------------------------------------------
    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a preprocessed batch (layout/dtype per the card); (N, C) outputs."""
        raise NotImplementedError

    def heads(self) -> list[Head]:
        """Input pipelines; an ensemble of differently sized members has one per member."""
        return [Head(self.card.preprocessing, 1.0, self.forward)]

    # -- shared logic --------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    @property
    def outputs_logits(self) -> bool:
        return self.card.model.get("output", "logits") == "logits"

    def to_probabilities(self, outputs: np.ndarray) -> np.ndarray:
        out = np.asarray(outputs, dtype=np.float64)
        return softmax(out) if self.outputs_logits else out

    def views(self, tta: bool | Sequence[str] | None) -> list[str]:
        if tta is None or tta is True:
            return check_views(list(self.card.tta.get("views", ["identity"])))
        if tta is False:
            return ["identity"]
        return check_views(list(tta))

    def predict_proba(
        self,
        images: Iterable[ImageLike],
        *,
        tta: bool | Sequence[str] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Probabilities (N, C). ``tta=None`` uses the card's views, ``False`` only identity."""
        views = self.views(tta)
        heads = self.heads()
        total_w = sum(h.weight for h in heads)
        out: list[np.ndarray] = []
        batch: list[Image.Image] = []

        def flush() -> None:
            acc = np.zeros((len(batch), len(self.classes)))
            for head in heads:
                geo = [head.spec.geometric(im) for im in batch]
                for view in views:
                    x = head.spec.finalize(
                        np.stack([head.spec.normalize(np.asarray(apply_view(view, g, head.spec))) for g in geo])
                    )
                    acc += head.weight * self.to_probabilities(head.forward(x))
            out.append(acc / (total_w * len(views)))
            batch.clear()

        for item in images:
            batch.append(self._open(item))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return decide(probs, self.classes, self.card.decision)

    def predict(self, images: Iterable[ImageLike], **kw: object) -> tuple[np.ndarray, np.ndarray]:
        probs = self.predict_proba(images, **kw)  # type: ignore[arg-type]
        return probs, self.decide(probs)

    def _open(self, item: ImageLike) -> Image.Image:
        if isinstance(item, Image.Image):
            return item.convert("RGB") if item.mode != "RGB" else item
        from ..data.images import load_image

        # Decode JPEGs at reduced scale when they are far larger than the model input.
        size = max(max(h.spec.input_size) for h in self.heads())  # heads() is cheap: built once
        return load_image(item, draft_size=2 * size)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {self.path.name} classes={len(self.classes)}>"
