"""The one preprocessing specification.

A ``PreprocessSpec`` says exactly how an RGB image becomes a model input: resize policy, crop,
interpolation, normalisation, channel order, layout, dtype and (for integer-input models) the
input quantisation. It is serialised into every artifact card; training's evaluation transform,
each exporter, the runtime, the bench and the Kotlin/JS demos all execute *this* spec, so there is
no second implementation to drift. ``tests/golden/preprocess.json`` pins its output on real images.

Resizing uses Pillow's antialiased separable filters (``Image.resize`` with ``reducing_gap=None``),
a well-defined convolution that the app and web demos re-implement in float (they agree to about
one grey level, see the golden-vector tests).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ResizeMode = Literal["shorter", "stretch", "pad"]
Interp = Literal["nearest", "bilinear", "bicubic", "lanczos"]
_PIL_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

SPEC_VERSION = 1


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input.

    - ``resize="shorter"``: scale the shorter side to ``resize_to`` keeping the aspect, then
      centre-crop ``input_size`` (the timm/torchvision evaluation convention).
    - ``resize="stretch"``: resize straight to ``input_size`` (no crop; the aspect changes).
    - ``resize="pad"``: scale the longer side to the input size and pad with ``pad_value``.
    ``resize_to`` defaults to ``input_size / crop_pct``.

    ``exact_decode``: decode every pixel of the file before the resize. By default (False) an
    image much larger than the input is decoded at reduced scale (JPEG draft, integer box
    reduce; see ``decode_size`` and docs/decoding.md), which changes the model input by a grey
    level or two and bounds decode memory. Set it for a model whose validation numbers must
    reproduce bit for bit from the full-resolution pixels. Serialised only when True, so cards
    written before it existed keep their bytes and digest.
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    resize: ResizeMode = "shorter"
    crop_pct: float = 0.875
    interpolation: Interp = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16", "uint8", "int8"] = "float32"
    # Integer-input models (full-integer TFLite): q = round(x / scale) + zero_point, where x is
    # the normalised float value.
    input_scale: float | None = None
    input_zero_point: int | None = None
    pad_value: tuple[int, int, int] = (0, 0, 0)
    exact_decode: bool = False
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return int(self.input_size[0])

    @property
    def width(self) -> int:
        return int(self.input_size[1])

    def resize_target(self, w: int, h: int) -> tuple[int, int]:
        """The (width, height) an image of size (w, h) is resized to before cropping."""
        if self.resize == "stretch":
            return self.width, self.height
        if self.resize == "pad":
            scale = min(self.width / w, self.height / h)
            return max(1, round(w * scale)), max(1, round(h * scale))
        short_target = int(round(min(self.height, self.width) / self.crop_pct))
        scale = short_target / min(w, h)
        # Same rounding as torchvision's Resize(int): the short side is exact, the long side rounds.
        if w <= h:
            return short_target, max(1, int(round(h * scale)))
        return max(1, int(round(w * scale))), short_target

    def geometric(self, img: Image.Image) -> Image.Image:
        """Resize and crop/pad an RGB image to ``input_size`` (uint8 RGB result)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        tw, th = self.resize_target(*img.size)
        if (tw, th) != img.size:
            img = img.resize((tw, th), _PIL_INTERP[self.interpolation], reducing_gap=None)
        if self.resize == "pad":
            canvas = Image.new("RGB", (self.width, self.height), tuple(self.pad_value))
            canvas.paste(img, ((self.width - tw) // 2, (self.height - th) // 2))
            return canvas
        if (tw, th) != (self.width, self.height):
            left = int(round((tw - self.width) / 2.0))
            top = int(round((th - self.height) / 2.0))
            img = img.crop((left, top, left + self.width, top + self.height))
        return img

    # -- numerics ---------------------------------------------------------------------------
    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 RGB → normalised float32 HxWx3 in the spec's channel order."""
        x = rgb.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        return x

    def finalize(self, x: np.ndarray) -> np.ndarray:
        """Normalised float HxWx3 (or NxHxWx3) → layout and dtype of the model input."""
        if self.layout == "NCHW":
            x = np.moveaxis(x, -1, -3)
        if self.dtype in ("uint8", "int8"):
            if self.input_scale is None or self.input_zero_point is None:
                raise ValueError("integer input needs input_scale and input_zero_point")
            info = np.iinfo(self.dtype)
            q = np.round(x / self.input_scale) + self.input_zero_point
            return np.clip(q, info.min, info.max).astype(self.dtype)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def to_float_hwc(self, img: Image.Image) -> np.ndarray:
        """Image → normalised float32 HxWx3 (before layout/dtype); what TTA views operate on."""
        return self.normalize(np.asarray(self.geometric(img), dtype=np.uint8))

    def apply(self, img: Image.Image) -> np.ndarray:
        """One image → one model input (no batch axis)."""
        return self.finalize(self.to_float_hwc(img))

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([self.apply(im) for im in images])

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["pad_value"] = list(self.pad_value)
        if not self.exact_decode:
            del d["exact_decode"]  # the default: older cards and their digests stay unchanged
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields: {sorted(unknown)}")
        if int(d.get("version", SPEC_VERSION)) > SPEC_VERSION:
            raise ValueError(
                f"preprocessing spec version {d['version']} is newer than this edgederm "
                f"understands ({SPEC_VERSION}): upgrade edgederm"
            )
        d = dict(d)
        for key in ("input_size", "mean", "std", "pad_value"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_(self, **changes: Any) -> "PreprocessSpec":
        return replace(self, **changes)


# Decoded images keep at least this many times the pixels the spec's resize produces along each
# axis: the antialiased resize then sees enough samples per output pixel that decoding at
# reduced scale moves the model input by about one grey level (measured in docs/decoding.md).
DECODE_OVERSAMPLE = 2


def decode_size(spec: PreprocessSpec, *, crops: bool = False, segmenter: Any = None) -> int | None:
    """The smallest side an image may be decoded at for ``spec`` (None: decode every pixel).

    ``load_image(ref, decode_size=decode_size(spec))`` keeps both sides of the decoded image >=
    this: ``DECODE_OVERSAMPLE`` x the largest side the resize produces (the shorter-side target
    ``min(input_size) / crop_pct`` for ``resize="shorter"``, else the input size). None when the
    spec says ``exact_decode``, or when ``crops`` (a segment-then-classify crop keeps only part of
    the image, so the whole image's bound says nothing about the crop's resolution).
    """
    # ``segmenter``: a card's segmenter entry (dict) or a LesionSegmenter; its mode says whether it crops.
    mode = segmenter.get("mode", "") if isinstance(segmenter, dict) else getattr(segmenter, "mode", "")
    if spec.exact_decode or crops or "crop" in str(mode or ""):
        return None
    target = max(spec.height, spec.width)
    if spec.resize == "shorter":
        target = max(target, int(round(min(spec.height, spec.width) / spec.crop_pct)))
    return DECODE_OVERSAMPLE * target


def spec_for_size(size: int, **kw: Any) -> PreprocessSpec:
    """A square-input spec with the ImageNet defaults."""
    return PreprocessSpec(input_size=(size, size), **kw)
