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
from ..numerics import softmax
from ..preprocess import PreprocessSpec, decode_size
from ..tta import apply_view, check_views

log = logging.getLogger(__name__)

ImageLike = Image.Image | str | Path


@dataclass
class Head:
    """One input pipeline of a predictor: a spec, a weight, and the function that runs it."""

    spec: PreprocessSpec
    weight: float
    forward: Callable[[np.ndarray], np.ndarray]


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

    def member_probabilities(
        self,
        images: Iterable[ImageLike],
        *,
        tta: bool | Sequence[str] | None = None,
        batch_size: int = 16,
    ) -> list[np.ndarray]:
        """Per head (ensemble member), its TTA-view-averaged probabilities (N, C)."""
        views = self.views(tta)
        heads = self.heads()
        out: list[list[np.ndarray]] = [[] for _ in heads]
        batch: list[Image.Image] = []

        def flush() -> None:
            for h, head in enumerate(heads):
                geo = [head.spec.geometric(im) for im in batch]
                acc = np.zeros((len(batch), len(self.classes)))
                for view in views:
                    x = head.spec.finalize(
                        np.stack([head.spec.normalize(np.asarray(apply_view(view, g, head.spec))) for g in geo])
                    )
                    acc += self.to_probabilities(head.forward(x))
                out[h].append(acc / len(views))
            batch.clear()

        for item in images:
            batch.append(self._prepare(item))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        empty = np.zeros((0, len(self.classes)))
        return [np.concatenate(o) if o else empty for o in out]

    def combine(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        """Ensemble rule from the card: BACC-weighted mean, or a stacker fitted on validation."""
        rule = self.card.model.get("combine", "weighted_mean")
        if rule == "logit_stacking":
            from ..stacking import apply_stacking

            # The stacker was fitted on the members' log-probabilities (view-averaged).
            return apply_stacking([np.log(np.clip(p, 1e-7, 1.0)) for p in member_probs], self.card.model["stacking"])
        weights = [h.weight for h in self.heads()]
        total = sum(weights)
        return sum(w * p for w, p in zip(weights, member_probs)) / total

    def predict_proba(
        self,
        images: Iterable[ImageLike],
        *,
        tta: bool | Sequence[str] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Probabilities (N, C). ``tta=None`` uses the card's views, ``False`` only identity."""
        return self.combine(self.member_probabilities(images, tta=tta, batch_size=batch_size))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return decide(probs, self.classes, self.card.decision)

    def predict(self, images: Iterable[ImageLike], **kw: object) -> tuple[np.ndarray, np.ndarray]:
        probs = self.predict_proba(images, **kw)  # type: ignore[arg-type]
        return probs, self.decide(probs)

    @property
    def decode_size(self) -> int | None:
        """The smallest side this predictor's images may be decoded at (None: every pixel).

        ``edgederm.preprocess.decode_size`` of each head's spec, the largest over an ensemble's
        heads; None if any head's spec says ``exact_decode`` or the card's segmenter crops.
        """
        entry = self.card.model.get("segmenter")
        sizes = [decode_size(h.spec, segmenter=entry) for h in self.heads()]  # heads() is cheap: built once
        return None if any(s is None for s in sizes) else max(s for s in sizes if s is not None)

    def load_image(self, ref: ImageLike) -> Image.Image:
        """Decode an image file for this predictor: 8-bit RGB, EXIF orientation applied, at
        reduced scale when the card's preprocessing allows (``decode_size``; docs/decoding.md).

        Raises ``ImageError`` (one line) for unreadable files and for images over the pixel limit.
        A PIL image is returned as RGB, as it is. The segmenter, if any, is not applied here:
        ``predict_proba`` does that, so its output can be fed back in.
        """
        if isinstance(ref, Image.Image):
            return ref.convert("RGB") if ref.mode != "RGB" else ref
        from ..data.images import load_image

        return load_image(ref, decode_size=self.decode_size)

    def _prepare(self, item: ImageLike) -> Image.Image:
        """An input as the heads' specs receive it: decoded, then through the card's segmenter."""
        img = self.load_image(item)
        seg = self._segmenter()
        return seg(img) if seg is not None else img

    def _segmenter(self) -> Callable[[Image.Image], Image.Image] | None:
        """The card's segment-then-classify stage (built once), or None."""
        entry = self.card.model.get("segmenter")
        if not entry:
            return None
        if getattr(self, "_seg", None) is None:
            from ..seg.apply import segmenter_from_card_entry

            self._seg = segmenter_from_card_entry(entry)
        return self._seg

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {self.path.name} classes={len(self.classes)}>"
