"""Is this a colour dermoscopic image? Cheap checks that warn (never refuse) before a prediction.

A classifier trained on dermoscopy answers confidently on anything; grayscale scans and
half-transparent cut-outs (composited on black by the decoder) flip predictions without any sign.
``input_warnings`` lists what looks wrong with one input, from the file header (mode, alpha) and
from colour statistics of a 64-px thumbnail of the decoded RGB image.

The thresholds are set far outside what real dermoscopy shows. On the 7,029 images of the shared
real data (HAM10000, ISIC 2019 train/test, ISIC 2020, PH2), per image and on the thumbnail:

* the 99th percentile of pixel chroma (max - min channel) is at least 0.059 (15/255), also for
  nearly colourless old-microscope images; a grayscale image saved as JPEG has 0. Threshold 0.02.
* the 90th percentile of luminance is at least 0.125 (vignetted ISIC 2020 images); threshold 0.08.
* the 10th percentile of luminance is at most 0.86; threshold 0.93 (a white page, an overexposure).

None of those 7,029 images gets a warning (``tests/test_predict.py`` checks a sample).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["input_warnings", "header_warnings", "colour_warnings"]

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Reading the alpha band means a second decode; above this many pixels we trust the header alone
# (an edge tool should not spend another few hundred MB to refine a warning).
_ALPHA_DECODE_MAX_PIXELS = 40_000_000

MIN_CHROMA_P99 = 0.02
MIN_LUMA_P90 = 0.08
MAX_LUMA_P10 = 0.93


def _is_gray_palette(img: Image.Image) -> bool:
    pal = img.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3]).reshape(-1, 3)
    return bool(len(rgb)) and bool((rgb.max(1) == rgb.min(1)).all())


def header_warnings(ref: str | os.PathLike[str]) -> list[str]:
    """Warnings from the file's header: grayscale or alpha-channel source (no full decode).

    An alpha channel is only reported when some pixel is actually transparent: many PNG exports
    carry an all-opaque alpha, and those decode to exactly the RGB image.
    """
    path = Path(os.fspath(ref))
    out: list[str] = []
    try:
        with Image.open(path) as img:  # reads the header only
            mode, size = img.mode, img.size
            gray = mode in _GRAY_MODES or (mode in ("P", "PA") and _is_gray_palette(img))
            alpha = mode in _ALPHA_MODES or "transparency" in img.info
            if gray:
                out.append(f"grayscale source (mode {mode}): the model expects colour dermoscopy")
            if alpha:
                if size[0] * size[1] > _ALPHA_DECODE_MAX_PIXELS:
                    out.append(f"alpha channel (mode {mode}): transparent pixels are composited on black")
                else:
                    a = np.asarray(img.convert("RGBA").getchannel("A"))
                    clear = float((a < 255).mean())
                    if clear > 0:
                        out.append(
                            f"alpha channel: {clear:.0%} of pixels are (partly) transparent, composited on black"
                        )
    except (OSError, ValueError, SyntaxError):
        # Not a file PIL can open (an npz ref, say): the decoder has already said what it could.
        pass
    return out


def colour_warnings(rgb: Image.Image) -> list[str]:
    """Warnings from the colour statistics of a decoded RGB image (a 64-px thumbnail of it)."""
    small = rgb.convert("RGB") if rgb.mode != "RGB" else rgb.copy()
    small.thumbnail((64, 64), Image.Resampling.BILINEAR)
    a = np.asarray(small, dtype=np.float32) / 255.0
    chroma = a.max(axis=2) - a.min(axis=2)
    luma = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out: list[str] = []
    if np.percentile(chroma, 99) < MIN_CHROMA_P99:
        out.append("no colour (the three channels are nearly equal): not a colour dermoscopic image?")
    if np.percentile(luma, 90) < MIN_LUMA_P90:
        out.append("extremely dark image")
    elif np.percentile(luma, 10) > MAX_LUMA_P10:
        out.append("nearly white image (overexposed or blank)")
    return out


def input_warnings(
    ref: str | os.PathLike[str] | None,
    rgb_image: Image.Image,
    input_size: int | Sequence[int] | None = None,
) -> list[str]:
    """Everything that suggests ``ref`` is not a colour dermoscopic image; empty when it looks fine.

    ``rgb_image`` is the decoded image the model will see (a JPEG decoded at reduced scale is still
    at least the model input, so the tiny check holds). ``input_size``: the model's input (an int
    or (H, W)); without it, no size check.
    """
    out = header_warnings(ref) if ref is not None else []
    if input_size is not None:
        need = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
        w, h = rgb_image.size
        if min(w, h) < min(need):
            out.append(f"tiny image {w}x{h}: smaller than the model input {need[-1]}x{need[0]}, upsampled")
    if not any(w.startswith("grayscale") for w in out):  # one message for one problem
        out += colour_warnings(rgb_image)
    return out
