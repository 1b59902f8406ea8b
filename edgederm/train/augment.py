"""Training augmentation: one uniform pipeline, or tiers chosen per class by its imbalance.

Rare classes get stronger augmentation than common ones (the founding projects' recipe): each
class's *imbalance ratio* ``max_count / class_count`` picks a tier from a table of named tiers,
lightest first, using ascending ``thresholds`` (default: ratio < 2 → ``light``, < 10 →
``medium``, otherwise ``heavy``). ``boost`` then moves chosen classes up that many tiers (default
``{"MEL": 1}``: melanoma is the class a dermoscopy model must not miss, so it gets the heavier
treatment its count alone would not earn). Tiers, thresholds and boost are plain data
(``TierConfig.from_dict`` / ``to_dict``), so a recipe can change them and the run card records them.

Tier parameters (every key optional; a missing key is "off"):

=================  ==========================================================================
``dihedral``       random flip/transpose: all 8 orientations, lossless (dermoscopy has no up)
``rotation``       extra rotation by an angle uniform in ±degrees (on the source image, before
                   the crop, so the crop trims the corners it brings in) ...
``rotation_p``     ... applied with this probability
``crop_scale``     ``[lo, hi]`` area fraction of a random resized crop; ``null`` = the eval
                   spec's deterministic resize + centre crop
``crop_ratio``     ``[lo, hi]`` aspect range of the random resized crop
``color_jitter``   ``[brightness, contrast, saturation, hue]`` (torchvision ``ColorJitter``)
``blur_p``         probability of a Gaussian blur with sigma uniform in ``blur_sigma`` (pixels)
``occlusion_p``    probability of covering a random rectangle (area fraction ``occlusion_scale``,
                   aspect ``occlusion_ratio``) with the image's mean colour: random erasing on
                   PIL, with a fill that adds no black/white edges the model could key on
=================  ==========================================================================

All randomness comes from torch's global RNG (torchvision's v1 transforms and the three small
transforms below draw from it), so restoring ``torch.set_rng_state`` on ``--resume`` replays
the same augmentations; DataLoader workers get their torch seed from the loader, as usual.
"""

from __future__ import annotations

import bisect
import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..errors import EdgedermError
from ..preprocess import PreprocessSpec, spec_for_size

__all__ = [
    "TierConfig",
    "DEFAULT_TIERS",
    "TIER_PARAM_DEFAULTS",
    "imbalance_ratios",
    "assign_tiers",
    "build_tier_transform",
    "build_class_augment",
    "basic_augment",
    "RandomDihedral",
    "RandomGaussianBlur",
    "RandomOcclusion",
]

log = logging.getLogger(__name__)

PilTransform = Callable[[Image.Image], Image.Image]

# "Off" for every parameter: a tier only lists what it switches on.
TIER_PARAM_DEFAULTS: dict[str, Any] = {
    "dihedral": False,
    "rotation": 0.0,
    "rotation_p": 1.0,
    "crop_scale": None,
    "crop_ratio": [3 / 4, 4 / 3],
    "color_jitter": None,
    "blur_p": 0.0,
    "blur_sigma": [0.1, 1.5],
    "occlusion_p": 0.0,
    "occlusion_scale": [0.02, 0.1],
    "occlusion_ratio": [0.5, 2.0],
}

DEFAULT_TIERS: dict[str, dict[str, Any]] = {
    # Common classes: orientation only, the eval geometry otherwise.
    "light": {"dihedral": True, "rotation": 15.0, "rotation_p": 0.5},
    # The uniform pipeline's strength (see ``basic_augment``).
    "medium": {
        "dihedral": True,
        "rotation": 180.0,
        "rotation_p": 0.5,
        "crop_scale": [0.6, 1.0],
        "crop_ratio": [0.85, 1.18],
        "color_jitter": [0.15, 0.15, 0.1, 0.02],
    },
    # Rare classes: more scale/aspect change, stronger colour, blur and occlusion.
    "heavy": {
        "dihedral": True,
        "rotation": 180.0,
        "rotation_p": 0.75,
        "crop_scale": [0.35, 1.0],
        "crop_ratio": [0.75, 1.33],
        "color_jitter": [0.3, 0.3, 0.25, 0.05],
        "blur_p": 0.25,
        "blur_sigma": [0.1, 1.5],
        "occlusion_p": 0.25,
        "occlusion_scale": [0.02, 0.08],
        "occlusion_ratio": [0.5, 2.0],
    },
}


# -- configuration ----------------------------------------------------------------------------
def _range(name: str, key: str, v: Any, lo: float, hi: float) -> list[float]:
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)):
        raise EdgedermError(f"augmentation tier {name!r}: {key} must be [low, high], got {v!r}")
    a, b = float(v[0]), float(v[1])
    if not lo <= a <= b <= hi:
        raise EdgedermError(f"augmentation tier {name!r}: {key} must satisfy {lo} <= low <= high <= {hi}, got {v!r}")
    return [a, b]


def _prob(name: str, key: str, v: Any) -> float:
    if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise EdgedermError(f"augmentation tier {name!r}: {key} must be a probability in [0, 1], got {v!r}")
    return float(v)


def _tier_params(name: str, given: Any) -> dict[str, Any]:
    """Validate one tier's parameters and fill the missing ones with their "off" defaults."""
    if not isinstance(given, Mapping):
        raise EdgedermError(f"augmentation tier {name!r}: parameters must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(TIER_PARAM_DEFAULTS))
    if unknown:
        raise EdgedermError(f"augmentation tier {name!r}: unknown keys {unknown}; allowed: {sorted(TIER_PARAM_DEFAULTS)}")
    p = {**copy.deepcopy(TIER_PARAM_DEFAULTS), **copy.deepcopy(dict(given))}
    if not isinstance(p["dihedral"], bool):
        raise EdgedermError(f"augmentation tier {name!r}: dihedral must be true or false, got {p['dihedral']!r}")
    if not isinstance(p["rotation"], (int, float)) or not 0.0 <= float(p["rotation"]) <= 180.0:
        raise EdgedermError(f"augmentation tier {name!r}: rotation must be degrees in [0, 180], got {p['rotation']!r}")
    p["rotation"] = float(p["rotation"])
    for key in ("rotation_p", "blur_p", "occlusion_p"):
        p[key] = _prob(name, key, p[key])
    if p["crop_scale"] is not None:
        p["crop_scale"] = _range(name, "crop_scale", p["crop_scale"], 1e-3, 1.0)
    p["crop_ratio"] = _range(name, "crop_ratio", p["crop_ratio"], 1e-2, 1e2)
    if p["color_jitter"] is not None:
        cj = p["color_jitter"]
        if not (isinstance(cj, (list, tuple)) and len(cj) == 4 and all(isinstance(x, (int, float)) and x >= 0 for x in cj)):
            raise EdgedermError(
                f"augmentation tier {name!r}: color_jitter must be [brightness, contrast, saturation, hue] >= 0, got {cj!r}"
            )
        if cj[3] > 0.5:
            raise EdgedermError(f"augmentation tier {name!r}: color_jitter hue must be <= 0.5, got {cj[3]}")
        p["color_jitter"] = [float(x) for x in cj]
    p["blur_sigma"] = _range(name, "blur_sigma", p["blur_sigma"], 1e-3, 50.0)
    p["occlusion_scale"] = _range(name, "occlusion_scale", p["occlusion_scale"], 1e-4, 0.5)
    p["occlusion_ratio"] = _range(name, "occlusion_ratio", p["occlusion_ratio"], 1e-2, 1e2)
    return p


@dataclass
class TierConfig:
    """Which augmentation tier each class gets, and what each tier does.

    ``tiers`` is ordered lightest → heaviest; ``thresholds`` are the ``len(tiers) - 1`` ascending
    imbalance ratios at which the next tier starts; ``boost`` moves a class (by name) up (or, if
    negative, down) that many tiers, clamped to the table. Classes in ``boost`` that the task does
    not have are ignored, so the default works for any taxonomy.
    """

    thresholds: Sequence[float] = (2.0, 10.0)
    boost: dict[str, int] = field(default_factory=lambda: {"MEL": 1})
    tiers: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_TIERS))

    def __post_init__(self) -> None:
        if not isinstance(self.tiers, Mapping) or not self.tiers:
            raise EdgedermError("augmentation tiers: need a non-empty mapping of tier name -> parameters")
        self.tiers = {str(k): _tier_params(str(k), v) for k, v in self.tiers.items()}
        try:
            th = tuple(float(x) for x in self.thresholds)
        except (TypeError, ValueError):
            raise EdgedermError(f"augmentation thresholds must be a list of numbers, got {self.thresholds!r}") from None
        if len(th) != len(self.tiers) - 1:
            raise EdgedermError(f"augmentation: {len(self.tiers)} tiers need {len(self.tiers) - 1} thresholds, got {len(th)}")
        if any(not math.isfinite(x) or x < 1.0 for x in th) or any(b <= a for a, b in zip(th, th[1:])):
            raise EdgedermError(f"augmentation thresholds must be strictly increasing ratios >= 1, got {list(th)}")
        self.thresholds = th
        if not isinstance(self.boost, Mapping):
            raise EdgedermError(f"augmentation boost must map class -> tiers, got {self.boost!r}")
        for cls, k in self.boost.items():
            if isinstance(k, bool) or not isinstance(k, int):
                raise EdgedermError(f"augmentation boost for {cls!r} must be an integer number of tiers, got {k!r}")
        self.boost = {str(k): int(v) for k, v in self.boost.items()}

    @property
    def tier_names(self) -> list[str]:
        return list(self.tiers)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "TierConfig":
        """From a recipe mapping; missing keys keep their defaults, ``tiers`` replaces the table."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise EdgedermError(f"augmentation tiers config must be a mapping, got {type(d).__name__}")
        allowed = {"thresholds", "boost", "tiers"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise EdgedermError(f"augmentation tiers config: unknown keys {unknown}; allowed: {sorted(allowed)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready, complete (every tier parameter written out)."""
        return {
            "thresholds": list(self.thresholds),
            "boost": dict(self.boost),
            "tiers": copy.deepcopy(self.tiers),
        }


# -- tier assignment ----------------------------------------------------------------------------
def _count_map(counts: Mapping[str, int] | Sequence[int], classes: Sequence[str]) -> dict[str, int]:
    if isinstance(counts, Mapping):
        missing = [c for c in classes if c not in counts]
        if missing:
            raise EdgedermError(f"class counts lack {missing}")
        out = {c: int(counts[c]) for c in classes}
    else:
        seq = list(np.asarray(counts).ravel())
        if len(seq) != len(classes):
            raise EdgedermError(f"{len(seq)} class counts for {len(classes)} classes")
        out = {c: int(n) for c, n in zip(classes, seq)}
    if any(n < 0 for n in out.values()):
        raise EdgedermError(f"class counts must be >= 0, got {out}")
    if not any(out.values()):
        raise EdgedermError("class counts are all zero")
    return out


def imbalance_ratios(counts: Mapping[str, int] | Sequence[int], classes: Sequence[str]) -> dict[str, float]:
    """``max_count / class_count`` per class (``inf`` for a class with no images)."""
    cm = _count_map(counts, classes)
    biggest = max(cm.values())
    return {c: (biggest / n if n > 0 else math.inf) for c, n in cm.items()}


def assign_tiers(
    counts: Mapping[str, int] | Sequence[int],
    classes: Sequence[str],
    config: TierConfig | None = None,
) -> dict[str, str]:
    """Class name → tier name, from the training counts (a mapping, or a sequence aligned with
    ``classes``). A ratio equal to a threshold falls in the heavier tier."""
    cfg = config or TierConfig()
    ratios = imbalance_ratios(counts, classes)
    names = cfg.tier_names
    unused = sorted(set(cfg.boost) - set(classes))
    if unused:
        log.debug("augmentation boost for classes this task lacks, ignored: %s", unused)
    out: dict[str, str] = {}
    for c in classes:
        level = bisect.bisect_right(cfg.thresholds, ratios[c]) + cfg.boost.get(c, 0)
        out[c] = names[min(max(level, 0), len(names) - 1)]
    log.info("augmentation tiers: %s", ", ".join(f"{c} {out[c]} (x{ratios[c]:.1f})" for c in classes))
    return out


# -- transforms ------------------------------------------------------------------------------------
_DIHEDRAL = (
    None,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi).item())


class RandomDihedral:
    """One of the 8 flips/right-angle rotations, uniformly (exact: no interpolation)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        op = _DIHEDRAL[int(torch.randint(0, 8, (1,)).item())]
        return img if op is None else img.transpose(op)

    def __repr__(self) -> str:
        return "RandomDihedral()"


class RandomGaussianBlur:
    """With probability ``p``, a Gaussian blur with sigma uniform in ``sigma`` (pixels)."""

    def __init__(self, p: float, sigma: Sequence[float]) -> None:
        self.p, self.sigma = p, (float(sigma[0]), float(sigma[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        if float(torch.rand(1).item()) >= self.p:
            return img
        # Pillow's GaussianBlur radius is the standard deviation.
        return img.filter(ImageFilter.GaussianBlur(radius=_uniform(*self.sigma)))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(p={self.p}, sigma={self.sigma})"


class RandomOcclusion:
    """With probability ``p``, cover a random rectangle with the image's mean colour."""

    def __init__(self, p: float, scale: Sequence[float], ratio: Sequence[float]) -> None:
        self.p = p
        self.scale = (float(scale[0]), float(scale[1]))
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        if float(torch.rand(1).item()) >= self.p:
            return img
        w, h = img.size
        area = _uniform(*self.scale) * w * h
        aspect = math.exp(_uniform(*self.log_ratio))
        ow = min(w, max(1, int(round(math.sqrt(area * aspect)))))
        oh = min(h, max(1, int(round(math.sqrt(area / aspect)))))
        x0 = int(torch.randint(0, w - ow + 1, (1,)).item())
        y0 = int(torch.randint(0, h - oh + 1, (1,)).item())
        rgb = img.convert("RGB")
        fill = tuple(int(round(v)) for v in np.asarray(rgb, dtype=np.float32).reshape(-1, 3).mean(0))
        out = rgb.copy()
        out.paste(fill, (x0, y0, x0 + ow, y0 + oh))
        return out

    def __repr__(self) -> str:
        return f"RandomOcclusion(p={self.p}, scale={self.scale}, log_ratio={self.log_ratio})"


class _Geometry:
    """The eval spec's deterministic resize + centre crop (tiers without a random crop)."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.spec.geometric(img)

    def __repr__(self) -> str:
        return f"SpecGeometry(resize={self.spec.resize!r}, input_size={self.spec.input_size})"


class _ToRGB:
    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def build_tier_transform(
    size: int, params: Mapping[str, Any], *, spec: PreprocessSpec | None = None, name: str = "tier"
) -> PilTransform:
    """One tier's PIL → PIL transform, ending at ``size``×``size`` RGB.

    Order: orientation, rotation (on the source, so the crop trims its corners), geometry
    (random resized crop or the spec's resize + centre crop), colour, blur, occlusion.
    """
    from torchvision import transforms as T

    p = _tier_params(name, params)
    spec = spec or spec_for_size(size)
    if tuple(spec.input_size) != (size, size):
        raise EdgedermError(f"augmentation: spec input size {spec.input_size} differs from {size}x{size}")
    steps: list[Any] = [_ToRGB()]
    if p["dihedral"]:
        steps.append(RandomDihedral())
    if p["rotation"] > 0 and p["rotation_p"] > 0:
        rot = T.RandomRotation(p["rotation"], interpolation=T.InterpolationMode.BILINEAR)
        steps.append(rot if p["rotation_p"] >= 1.0 else T.RandomApply([rot], p=p["rotation_p"]))
    if p["crop_scale"] is not None:
        steps.append(
            T.RandomResizedCrop(
                size, scale=tuple(p["crop_scale"]), ratio=tuple(p["crop_ratio"]),
                interpolation=T.InterpolationMode.BILINEAR, antialias=True,
            )
        )
    else:
        steps.append(_Geometry(spec))
    if p["color_jitter"] is not None and any(p["color_jitter"]):
        steps.append(T.ColorJitter(*p["color_jitter"]))
    if p["blur_p"] > 0:
        steps.append(RandomGaussianBlur(p["blur_p"], p["blur_sigma"]))
    if p["occlusion_p"] > 0:
        steps.append(RandomOcclusion(p["occlusion_p"], p["occlusion_scale"], p["occlusion_ratio"]))
    return T.Compose(steps)


def build_class_augment(
    size: int,
    classes: Sequence[str],
    tiers: Mapping[str, str],
    config: TierConfig | None = None,
    *,
    spec: PreprocessSpec | None = None,
) -> dict[int, PilTransform]:
    """Class index → that class's tier transform (PIL → ``size``×``size`` RGB PIL).

    ``tiers`` is ``assign_tiers``'s result; classes sharing a tier share one transform object.
    ``spec`` (default ``spec_for_size(size)``) is the geometry of tiers without a random crop:
    pass the member's eval spec so those classes see exactly the eval framing.
    """
    cfg = config or TierConfig()
    missing = [c for c in classes if c not in tiers]
    if missing:
        raise EdgedermError(f"augmentation: no tier for classes {missing}")
    bad = sorted({tiers[c] for c in classes} - set(cfg.tiers))
    if bad:
        raise EdgedermError(f"augmentation: unknown tiers {bad}; the table has {cfg.tier_names}")
    built: dict[str, PilTransform] = {}
    out: dict[int, PilTransform] = {}
    for i, c in enumerate(classes):
        t = tiers[c]
        if t not in built:
            built[t] = build_tier_transform(size, cfg.tiers[t], spec=spec, name=t)
        out[i] = built[t]
    return out


def basic_augment(size: int) -> PilTransform:
    """The uniform pipeline (every class alike). Dermoscopy is orientation-free: flips, any
    rotation, scale and mild colour changes."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.85, 1.18)),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomApply([T.RandomRotation(180)], p=0.5),
            T.ColorJitter(0.15, 0.15, 0.1, 0.02),
        ]
    )
