"""Segment-then-classify: show the classifier the lesion, not the whole field of view.

``segment_lesion(img, mask, mode)`` turns an image and its lesion mask into the classifier's input:

* ``"mask"``: pixels outside the lesion are replaced by a flat background colour;
* ``"crop"``: the image is cropped to the lesion's bounding box plus a margin, made square;
* ``"mask+crop"``: both.

The lesion is the mask's **largest connected component** (8-connectivity) in every mode: a
segmenter's typical error is a few specks of hair or vignette next to the lesion, and a crop that
stretched to include them would undo the point of cropping.

Background colour (``background="skin"``, the default): the mean colour of this image's own skin,
i.e. of the pixels outside the lesion that are not part of the dermoscope's black vignette. Why not
black: (1) every classifier here is trained on whole dermoscopy images, in which a lesion is
surrounded by skin; a skin-coloured surround keeps the input close to that distribution, whereas a
large black area is new to the model, and dark/blue-black colour is itself a melanoma feature the
model has learnt to respond to; (2) the contrast at the lesion border stays close to the real
lesion-to-skin contrast, while black makes every border look abrupt, and an abrupt border cut-off
is one of the dermoscopic criteria of melanoma; (3) it is per image, so it follows the patient's
skin tone rather than imposing a constant. ``background="black"`` is available (it matches how
``edgederm.data.images`` composites transparent cut-outs); use whichever the classifier was
trained with, and the same at inference.

An empty mask (the segmenter found nothing) returns the image unchanged and logs a warning: the
classifier then sees the whole image, which is what it would have seen without segmentation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..errors import EdgedermError
from .data import resize_mask

log = logging.getLogger(__name__)

Mode = Literal["mask", "crop", "mask+crop"]
Background = Literal["skin", "black"]
MODES = ("mask", "crop", "mask+crop")
BACKGROUNDS = ("skin", "black")

# Pixels darker than this (mean of R, G, B) are taken as the dermoscope's vignette, not skin.
VIGNETTE_LEVEL = 30

__all__ = ["LesionSegmenter", "largest_component", "lesion_box", "segment_lesion", "skin_colour"]


def _as_mask(mask: np.ndarray | Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Any mask form -> boolean HxW at the image's ``size`` = (width, height)."""
    if isinstance(mask, Image.Image):
        m = np.asarray(mask.convert("L")) > 127
    else:
        arr = np.asarray(mask)
        if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
            arr = arr[..., :3].mean(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
        if arr.ndim != 2:
            raise ValueError(f"a mask must be HxW, got shape {np.asarray(mask).shape}")
        if arr.dtype == bool:
            m = arr
        else:
            m = arr > (0.5 if arr.size and float(arr.max()) <= 1.0 else 127)
    if (m.shape[1], m.shape[0]) != tuple(size):
        m = resize_mask(m, size)
    return m


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (all False if the mask is empty)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def skin_colour(arr: np.ndarray, lesion: np.ndarray) -> tuple[int, int, int]:
    """Mean RGB of the non-lesion pixels outside the vignette (black if there are none)."""
    outside = ~lesion
    skin = outside & (arr.mean(axis=2) > VIGNETTE_LEVEL)
    pick = skin if skin.any() else outside
    if not pick.any():
        return (0, 0, 0)
    return tuple(int(round(float(v))) for v in arr[pick].mean(axis=0))  # type: ignore[return-value]


def lesion_box(lesion: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Square box (left, top, right, bottom), possibly extending past the image, around the
    lesion's bounding box grown by ``margin`` x its width / height on each side."""
    ys, xs = np.nonzero(lesion)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    bw, bh = x1 - x0, y1 - y0
    w, h = bw * (1 + 2 * margin), bh * (1 + 2 * margin)
    side = max(1, int(round(max(w, h))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    H, W = lesion.shape
    # Slide the square back inside the image where it fits; centre it where it cannot.
    left = (W - side) // 2 if side > W else min(max(left, 0), W - side)
    top = (H - side) // 2 if side > H else min(max(top, 0), H - side)
    return left, top, left + side, top + side


def segment_lesion(
    img: Image.Image,
    mask: np.ndarray | Image.Image,
    mode: Mode = "mask",
    margin: float = 0.1,
    *,
    background: Background = "skin",
) -> Image.Image:
    """The lesion of ``img`` as the classifier should see it (see the module docstring).

    ``mask``: boolean / 0-1 / 0-255 array or PIL image, at the image's size or the same aspect
    ratio (then resized). ``margin``: crop margin on each side, as a fraction of the lesion's
    bounding-box width/height. Returns an RGB image (the input unchanged for an empty mask).
    """
    if mode not in MODES:
        raise EdgedermError(f"unknown segmentation mode {mode!r}; choose one of {', '.join(MODES)}")
    if background not in BACKGROUNDS:
        raise EdgedermError(f"unknown background {background!r}; choose one of {', '.join(BACKGROUNDS)}")
    if not margin >= 0:
        raise EdgedermError(f"margin must be >= 0, got {margin}")
    img = img.convert("RGB")
    m = _as_mask(mask, img.size)
    if not m.any():
        log.warning("segment_lesion: empty lesion mask, using the whole image (%dx%d)", img.width, img.height)
        return img
    lesion = largest_component(m)
    arr = np.asarray(img)
    fill = skin_colour(arr, lesion) if background == "skin" else (0, 0, 0)
    if mode in ("mask", "mask+crop"):
        out = arr.copy()
        out[~lesion] = fill
        img = Image.fromarray(out)
    if mode in ("crop", "mask+crop"):
        left, top, right, bottom = lesion_box(lesion, margin)
        if left >= 0 and top >= 0 and right <= img.width and bottom <= img.height:
            img = img.crop((left, top, right, bottom))
        else:  # the square is larger than the image along one side: pad with the background
            canvas = Image.new("RGB", (right - left, bottom - top), fill)
            canvas.paste(img.crop((max(left, 0), max(top, 0), min(right, img.width), min(bottom, img.height))),
                         (max(-left, 0), max(-top, 0)))
            img = canvas
    return img


class LesionSegmenter:
    """A PIL -> PIL transform: segment with a trained checkpoint, then ``segment_lesion``.

    ``LesionSegmenter("runs/ph2-attention-unet/model.pt", mode="crop")(img)``; ``.mask(img)`` gives
    the boolean mask at the image's resolution. Runs on CPU; picklable for DataLoader workers.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        mode: Mode = "mask",
        margin: float = 0.1,
        *,
        background: Background = "skin",
    ) -> None:
        from .infer import load_segmenter

        if mode not in MODES:
            raise EdgedermError(f"unknown segmentation mode {mode!r}; choose one of {', '.join(MODES)}")
        self.checkpoint = str(checkpoint)
        self.model, self.size = load_segmenter(checkpoint)
        self.mode, self.margin, self.background = mode, margin, background

    def mask(self, img: Image.Image) -> np.ndarray:
        from .infer import predict_mask

        return predict_mask(self.model, img, self.size)

    def __call__(self, img: Image.Image) -> Image.Image:
        return segment_lesion(img, self.mask(img), self.mode, self.margin, background=self.background)

    def __repr__(self) -> str:
        return f"LesionSegmenter({self.checkpoint!r}, mode={self.mode!r}, margin={self.margin}, background={self.background!r})"


def segmenter_card_entry(spec: dict[str, Any]) -> dict[str, Any]:
    """The card's record of a segment-then-classify stage: where the segmenter is, its SHA-256,
    and how its mask is applied. The runtime rebuilds the stage from this entry alone."""
    from ..fsutil import sha256_file

    unknown = sorted(set(spec) - {"checkpoint", "mode", "margin", "background"})
    if unknown or "checkpoint" not in spec:
        raise EdgedermError(f"segment: needs 'checkpoint' (+ optional mode, margin, background); unknown keys {unknown}")
    ckpt = Path(str(spec["checkpoint"])).expanduser().resolve()
    if not ckpt.exists():
        raise EdgedermError(f"segment: segmenter checkpoint not found: {ckpt} (train one with `edgederm segment train/ph2-attention-unet.yaml`)")
    mode = spec.get("mode", "mask")
    if mode not in MODES:
        raise EdgedermError(f"segment: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return {"checkpoint": str(ckpt), "sha256": sha256_file(ckpt), "mode": mode,
            "margin": float(spec.get("margin", 0.1)), "background": spec.get("background", "skin")}


def segmenter_from_card_entry(entry: dict[str, Any]) -> LesionSegmenter:
    """Rebuild the stage a card records; refuses a segmenter file that changed since training."""
    from ..fsutil import sha256_file

    ckpt = Path(entry["checkpoint"])
    if not ckpt.exists():
        raise EdgedermError(f"this model segments before classifying, and its segmenter is missing: {ckpt}")
    if entry.get("sha256") and sha256_file(ckpt) != entry["sha256"]:
        raise EdgedermError(f"segmenter {ckpt} differs from the one this model was trained with (SHA-256 mismatch)")
    return LesionSegmenter(ckpt, entry["mode"], entry["margin"], background=entry.get("background", "skin"))
