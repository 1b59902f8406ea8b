"""Test-time augmentation views, defined once and named in the card.

Every view is a deterministic operation on the uint8 RGB image *after* the spec's geometric
preprocessing (so it is cheap and the phone and browser can reproduce it exactly): the eight
dihedral transforms (exact pixel permutations) and two fixed zooms (a centred crop of the
preprocessed image resized back with the spec's interpolation). Predictions over views are
averaged as probabilities.
"""

from __future__ import annotations

from typing import Callable

from PIL import Image

from .preprocess import _PIL_INTERP, PreprocessSpec

ViewFn = Callable[[Image.Image, PreprocessSpec], Image.Image]

T = Image.Transpose
_DIHEDRAL: dict[str, tuple[Image.Transpose, ...]] = {
    "identity": (),
    "hflip": (T.FLIP_LEFT_RIGHT,),
    "vflip": (T.FLIP_TOP_BOTTOM,),
    "rot90": (T.ROTATE_90,),
    "rot180": (T.ROTATE_180,),
    "rot270": (T.ROTATE_270,),
    "transpose": (T.TRANSPOSE,),
    "transverse": (T.TRANSVERSE,),
}


def _dihedral(ops: tuple[Image.Transpose, ...]) -> ViewFn:
    def view(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
        for op in ops:
            img = img.transpose(op)
        return img

    return view


def _zoom(fraction: float) -> ViewFn:
    """Centred crop of ``fraction`` of each side, resized back to the input size."""

    def view(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
        w, h = img.size
        cw, ch = int(round(w * fraction)), int(round(h * fraction))
        left, top = (w - cw) // 2, (h - ch) // 2
        crop = img.crop((left, top, left + cw, top + ch))
        return crop.resize((w, h), _PIL_INTERP[spec.interpolation], reducing_gap=None)

    return view


VIEWS: dict[str, ViewFn] = {name: _dihedral(ops) for name, ops in _DIHEDRAL.items()}
VIEWS["zoom90"] = _zoom(0.9)
VIEWS["zoom80"] = _zoom(0.8)

#: The ten views of the seed projects' TTA: 8 dihedral + 2 fixed zoom crops.
TEN_VIEWS: tuple[str, ...] = tuple(_DIHEDRAL) + ("zoom90", "zoom80")


def check_views(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise ValueError(f"unknown TTA views {unknown}; known: {sorted(VIEWS)}")
    return names


def apply_view(name: str, img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    return VIEWS[name](img, spec)
