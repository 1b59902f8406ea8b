"""A deterministic generator of synthetic dermoscopy images: the embedded default data set.

edgederm must be demonstrable and testable anywhere without downloading anything, so it can write a
synthetic data set in the **HAM10000 layout** (``HAM10000_metadata.csv`` with the real columns, and
``HAM10000_images_part_1/<image_id>.jpg``); it then goes through the very same reader as the real
data.

Each lesion is rendered once in a canonical frame (an RGBA layer whose colour, border, texture and
structures depend on the class, loosely after the dermoscopic criteria: reticular network of nevi,
multicomponent asymmetry and streaks of melanoma, arborizing vessels and blue-grey ovoid nests of
BCC, strawberry pattern and scale of actinic keratosis, milia-like cysts and comedo openings of
seborrhoeic keratosis, central white patch of dermatofibroma, red-purple lacunae of vascular
lesions). Every image of a lesion is a different *view* of that layer (rotation, flip, scale,
offset) over freshly textured skin, with class-independent artefacts: hairs, ruler marks, the dark
round field of a dermatoscope, illumination gradients, colour cast, blur, sensor noise and JPEG
compression. Images of one lesion therefore look alike, so lesion-grouped splits are meaningful.

The classes overlap on purpose (atypical nevi and nevus-like melanomas share a continuous "atypia"
scale; light nevi and lentigines share colours; pink BCC and AK share backgrounds), so a small CNN
learns the set well but not perfectly, and melanoma vs nevus is the hardest pair, as in real life.

Everything is drawn from ``numpy.random.Generator`` streams derived from the seed, and drawing uses
PIL only in deterministic ways, so the same seed gives byte-identical files with the same numpy,
Pillow and libjpeg.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgederm.errors import DataError, EdgedermError

log = logging.getLogger(__name__)

__all__ = [
    "CLASSES",
    "DEFAULT_CLASS_WEIGHTS",
    "METADATA_COLUMNS",
    "METADATA_FILE",
    "IMAGE_DIR",
    "MARKER_FILE",
    "generate",
    "render_lesion",
]

GENERATOR_VERSION = 1

#: HAM10000's seven diagnostic classes (its ``dx`` codes), in HAM's alphabetical order.
CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

#: Imbalanced like HAM10000 (where nv is 67 %) but less extreme, so that balanced sampling
#: matters while every class still has enough lesions to learn from.
DEFAULT_CLASS_WEIGHTS: dict[str, float] = {
    "nv": 0.35,
    "mel": 0.15,
    "bkl": 0.13,
    "bcc": 0.12,
    "akiec": 0.10,
    "vasc": 0.08,
    "df": 0.07,
}

#: The columns of the real ``HAM10000_metadata.csv``, in its order.
METADATA_COLUMNS: tuple[str, ...] = (
    "lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset",
)
METADATA_FILE = "HAM10000_metadata.csv"
IMAGE_DIR = "HAM10000_images_part_1"
#: Provenance of a generated set; also what lets ``overwrite=True`` know a folder is ours.
MARKER_FILE = "edgederm_synthetic.json"

Color = tuple[float, float, float]


# --------------------------------------------------------------------------------------------
# Small numeric helpers (all vectorised, float32, colours in [0, 1])
# --------------------------------------------------------------------------------------------


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x to the right, y down)."""
    t = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
    return np.meshgrid(t, t)


def _noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Smooth value noise of about unit std: a cells x cells random grid, bicubically upsampled."""
    cells = max(2, int(cells))
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    up = np.asarray(Image.fromarray(g, mode="F").resize((n, n), Image.BICUBIC), dtype=np.float32)
    return up / (float(up.std()) + 1e-6)


def _fbm(rng: np.random.Generator, n: int, cells: int, octaves: int = 3) -> np.ndarray:
    out = np.zeros((n, n), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * _noise(rng, n, cells * 2**o)
        total += amp
        amp *= 0.5
    return out / total


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mix(a: np.ndarray, b: np.ndarray | Color, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colour images/colours a -> b by weight t (HxW)."""
    b = np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


def _jitter(rng: np.random.Generator, c: Color, amount: float = 0.05) -> np.ndarray:
    return np.clip(np.asarray(c, np.float32) + rng.normal(0, amount, 3).astype(np.float32), 0, 1)


def _lerp_color(a: Color, b: Color, t: float) -> np.ndarray:
    a_, b_ = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a_ + (b_ - a_) * np.float32(t)


def _worley(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, freq: float, jitter: float = 0.85
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cellular noise over [-1.3, 1.3]^2: distances to the nearest and second-nearest feature point
    (in cell units) and the id of the nearest cell. Its edges make a pigment network, its points
    globules, follicular openings or lacunae. Each pixel checks only its 3x3 neighbouring cells."""
    n = int(math.ceil(freq * 1.3)) + 4
    pts = rng.random((n, n, 2)).astype(np.float32) * jitter + (1.0 - jitter) / 2.0
    gx = (x + 1.3) * (freq / 2.0) + 1.0
    gy = (y + 1.3) * (freq / 2.0) + 1.0
    ix = np.floor(gx).astype(np.int64)
    iy = np.floor(gy).astype(np.int64)
    f1 = np.full(x.shape, np.inf, np.float32)
    f2 = np.full(x.shape, np.inf, np.float32)
    cid = np.zeros(x.shape, np.int64)
    for dy in (-1, 0, 1):
        cy = np.clip(iy + dy, 0, n - 1)
        for dx in (-1, 0, 1):
            cx = np.clip(ix + dx, 0, n - 1)
            p = pts[cy, cx]
            d = np.hypot(gx - (cx + p[..., 0]), gy - (cy + p[..., 1]))
            f2 = np.where(d < f1, f1, np.minimum(f2, d))
            closer = d < f1
            cid = np.where(closer, cy * n + cx, cid)
            f1 = np.where(closer, d, f1)
    return f1, f2, cid


def _canvas(n: int, ss: int = 2) -> tuple[Image.Image, ImageDraw.ImageDraw, float]:
    """An 'L' drawing canvas supersampled ss times, and the factor from [-1, 1] to its pixels."""
    img = Image.new("L", (n * ss, n * ss), 0)
    return img, ImageDraw.Draw(img), n * ss / 2.0


def _canvas_array(img: Image.Image, n: int, blur: float = 0.0) -> np.ndarray:
    img = img.resize((n, n), Image.BOX)
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img, dtype=np.float32) / 255.0


def _to_px(pts: np.ndarray, scale: float) -> list[tuple[float, float]]:
    return [(float((px + 1.0) * scale), float((py + 1.0) * scale)) for px, py in pts]


def _dots(n: int, centers: np.ndarray, radii: np.ndarray, blur: float = 0.0) -> np.ndarray:
    img, draw, s = _canvas(n)
    for (cx, cy), r in zip(centers, radii):
        px, py, pr = (cx + 1) * s, (cy + 1) * s, max(r * s, 0.8)
        draw.ellipse((px - pr, py - pr, px + pr, py + pr), fill=255)
    return _canvas_array(img, n, blur)


def _points_in_lesion(
    rng: np.random.Generator, k: int, radius: float, lo: float = 0.0, hi: float = 0.85
) -> np.ndarray:
    """k random points at normalised radius in [lo, hi] of a lesion of radius ``radius``."""
    ang = rng.uniform(0, 2 * np.pi, k)
    rad = radius * np.sqrt(rng.uniform(lo**2, hi**2, k))
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


# --------------------------------------------------------------------------------------------
# The lesion in its canonical frame
# --------------------------------------------------------------------------------------------


@dataclass
class _Shape:
    alpha: np.ndarray  # soft lesion mask, 1 inside
    nr: np.ndarray  # normalised radius: 0 at the centre, 1 on the border
    theta: np.ndarray
    radius: float


def _shape(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    radius: float,
    ellipticity: float,
    harmonics: float,
    wobble: float,
    edge: float,
) -> _Shape:
    """A blob whose border is a Fourier series in the angle (low orders: asymmetry, high orders:
    irregular notches) perturbed by 2-D noise; ``edge`` is the width of the soft border."""
    n = x.shape[0]
    r = np.hypot(x, y)
    th = np.arctan2(y, x)
    rho = np.ones_like(r)
    rho += ellipticity * np.cos(2 * (th - rng.uniform(0, np.pi)))
    for k in range(1, 9):
        # 1/k^0.7 decay: low orders dominate (asymmetry), high orders add notches.
        rho += harmonics * rng.normal(0, 1) / k**0.7 * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    rho += wobble * _noise(rng, n, 6)
    rho = np.clip(rho, 0.45, None) * radius
    # Keep the lesion inside the canonical field so views never cut it with a hard edge.
    rho = np.minimum(rho, 0.9)
    nr = r / rho
    alpha = _smoothstep(1.0 + edge / radius, 1.0 - edge / radius, nr)
    return _Shape(alpha=alpha, nr=nr, theta=th, radius=radius)


@dataclass
class _Lesion:
    """One lesion: its canonical RGBA layer, the skin it sits on and the dermatoscope and body
    site it was shot with (shared by all its views, as in HAM10000 where a lesion's images come
    from one session: same device, same hairy or hairless skin)."""

    dx: str
    color: np.ndarray  # HxWx3 in [0, 1]
    alpha: np.ndarray  # HxW in [0, 1]
    skin: np.ndarray  # base skin colour (3,)
    size: int
    cast: np.ndarray  # per-channel gain of the device (3,)
    vignette: float | None  # radius of the dermatoscope's round field, None: no visible field
    hair: float  # probability of hairs in a view
    hair_count: tuple[int, int]
    hair_color: np.ndarray


BROWN_LIGHT: Color = (0.69, 0.46, 0.41)
BROWN: Color = (0.51, 0.31, 0.27)
BROWN_DARK: Color = (0.31, 0.17, 0.15)
BLACK: Color = (0.12, 0.08, 0.08)
BLUE_GREY: Color = (0.42, 0.46, 0.58)
RED: Color = (0.72, 0.14, 0.18)
PINK: Color = (0.88, 0.62, 0.62)
WHITE: Color = (0.93, 0.90, 0.88)
YELLOW_WHITE: Color = (0.95, 0.91, 0.78)


def _network(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, freq: float, width: float, warp: float
) -> np.ndarray:
    """A pigment network: the edges of a warped cellular pattern, 1 on the lines."""
    n = x.shape[0]
    wx = x + warp * _noise(rng, n, 5) / freq
    wy = y + warp * _noise(rng, n, 5) / freq
    f1, f2, _ = _worley(rng, wx, wy, freq)
    return np.exp(-(((f2 - f1) / width) ** 2))


def _nevus_like(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, atypia: float, melanoma: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Melanocytic lesions (nv, mel) share one recipe driven by a continuous atypia in [0, 1]:
    border irregularity, asymmetry, number of colours, network disruption, streaks and peripheral
    dots all grow with it. Nevi draw low atypia, melanomas high, with overlap: this is what makes
    mel vs nv the hardest pair."""
    n = x.shape[0]
    a = atypia
    radius = rng.uniform(0.38, 0.62) + 0.2 * a * rng.uniform(0.3, 1.0)
    sh = _shape(
        rng, x, y, radius,
        ellipticity=rng.uniform(0.0, 0.12) + 0.15 * a * rng.random(),
        harmonics=0.015 + 0.11 * a,
        wobble=0.01 + 0.09 * a,
        edge=rng.uniform(0.03, 0.08),
    )
    nr = sh.nr
    base = _lerp_color(BROWN_LIGHT, BROWN_DARK, rng.uniform(0.0, 0.8) + (0.2 * a if melanoma else 0))
    color = np.broadcast_to(_jitter(rng, tuple(base), 0.035), x.shape + (3,)).copy()
    # Gentle colour variation everywhere; nevi are often a bit darker in the centre.
    color *= (1.0 + 0.06 * _noise(rng, n, 4))[..., None]
    color *= (1.0 - rng.uniform(-0.05, 0.2) * (1.0 - np.clip(nr, 0, 1)))[..., None]
    alpha = sh.alpha * rng.uniform(0.78, 0.95)

    pattern = rng.choice(["reticular", "globular", "homogeneous"], p=[0.6, 0.22, 0.18])
    if pattern == "reticular" or melanoma:
        freq = rng.uniform(9, 15)
        width = rng.uniform(0.14, 0.24) * (1.0 + 0.8 * a * np.clip(_noise(rng, n, 4), 0, None))
        net = _network(rng, x, y, freq, width, warp=0.3 + 1.5 * a)
        # Regular networks fade out towards the border; atypical ones stop abruptly in patches.
        fade = _smoothstep(1.05, 0.55, nr)
        patchy = _smoothstep(-0.4, 0.4, _noise(rng, n, 4) + 1.2 * (1 - a))
        strength = rng.uniform(0.35, 0.65) * fade * patchy
        color = _mix(color, BROWN_DARK, net * strength)
    if pattern == "globular" and not melanoma:
        f1, _, _ = _worley(rng, x, y, rng.uniform(7, 11))
        glob = np.exp(-((f1 / 0.25) ** 2)) * _smoothstep(1.0, 0.7, nr)
        color = _mix(color, BROWN_DARK, glob * rng.uniform(0.4, 0.7))

    # Extra colours in blotches: black, dark brown, blue-grey veil, red, white regression.
    extra: list[Color] = [BLACK, BROWN_DARK, BLUE_GREY, (0.70, 0.30, 0.30), WHITE]
    k = int(np.clip(np.round(rng.normal(3.2 * a, 0.6)), 0, 4))
    order = rng.permutation(len(extra))[:k]
    # Asymmetry: blotches sit off-centre, on one side.
    sx, sy = rng.normal(0, 0.5 * a * radius, 2)
    for idx in order:
        field = _noise(rng, n, 4) - 1.4 * np.hypot(x - sx, y - sy) / radius + 0.4
        field += 0.35 * _noise(rng, n, 16)
        thr = rng.uniform(0.0, 0.6)
        w = _smoothstep(thr, thr + 0.6, field) * rng.uniform(0.5, 0.85)
        w *= np.clip(0.8 + 0.25 * _noise(rng, n, 24), 0, 1)
        if extra[idx] == WHITE:  # regression: a veil, never an opaque patch
            w *= 0.6
        color = _mix(color, _jitter(rng, extra[idx], 0.03), w * (nr < 1.05))

    # Streaks / pseudopods: radial lines crossing the border in one sector.
    if rng.random() < (0.05 + 0.7 * a if melanoma else 0.05 * a):
        img, draw, s = _canvas(n)
        start = rng.uniform(0, 2 * np.pi)
        span = rng.uniform(0.8, 3.0)
        for _ in range(rng.integers(10, 28)):
            t = start + rng.uniform(0, span)
            r0 = radius * rng.uniform(0.65, 0.85)
            r1 = radius * rng.uniform(1.05, 1.3)
            pts = np.array([[r0 * np.cos(t), r0 * np.sin(t)], [r1 * np.cos(t), r1 * np.sin(t)]])
            pts = np.clip(pts, -0.95, 0.95)
            draw.line(_to_px(pts, s), fill=255, width=max(1, int(round(n / 64))))
        streak = _canvas_array(img, n, blur=0.6)
        color = _mix(color, BROWN_DARK, streak * 0.9)
        alpha = np.maximum(alpha, streak * 0.85)

    # Irregular dots at the periphery (atypical), regular ones are rare.
    if rng.random() < 0.1 + 0.6 * a:
        m = int(rng.integers(4, 16))
        pts = _points_in_lesion(rng, m, radius, 0.6, 1.0)
        dots = _dots(n, pts, rng.uniform(0.012, 0.03, m), blur=0.4)
        color = _mix(color, BLACK, dots * 0.85)
    return color, alpha


def _render_nv(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _nevus_like(rng, x, y, atypia=float(rng.beta(1.3, 7.0)), melanoma=False)


def _render_mel(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _nevus_like(rng, x, y, atypia=float(rng.beta(4.5, 1.7)), melanoma=True)


def _vessel_tree(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: float, p: np.ndarray, ang: float,
    length: float, width: float, depth: int
) -> None:
    """Arborizing vessel: a wiggly trunk that forks into thinner branches."""
    pts = [p.copy()]
    steps = 6
    for _ in range(steps):
        ang += rng.normal(0, 0.35)
        p = p + length / steps * np.array([np.cos(ang), np.sin(ang)])
        pts.append(np.clip(p, -0.95, 0.95))
    draw.line(_to_px(np.array(pts), s), fill=255, width=max(1, int(round(width))), joint="curve")
    if depth > 0:
        for sign in (-1, 1):
            if rng.random() < 0.8:
                _vessel_tree(draw, rng, s, pts[-1], ang + sign * rng.uniform(0.3, 0.9),
                             length * rng.uniform(0.5, 0.75), width * 0.65, depth - 1)


def _render_bcc(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    radius = rng.uniform(0.38, 0.65)
    sh = _shape(rng, x, y, radius, rng.uniform(0, 0.2), rng.uniform(0.03, 0.1), 0.05,
                rng.uniform(0.04, 0.1))
    base = _jitter(rng, (0.90, 0.66, 0.68) if rng.random() < 0.7 else (0.86, 0.72, 0.70), 0.03)
    color = np.broadcast_to(base, x.shape + (3,)).copy()
    color *= (1.0 + 0.04 * _noise(rng, n, 5))[..., None]
    alpha = sh.alpha * rng.uniform(0.55, 0.8)

    # Blue-grey ovoid nests / globules (pigmented BCC).
    if rng.random() < 0.6:
        m = int(rng.integers(1, 6))
        img, draw, s = _canvas(n)
        for c in _points_in_lesion(rng, m, radius, 0.0, 0.8):
            rx, ry = rng.uniform(0.04, 0.11, 2)
            px, py = (c[0] + 1) * s, (c[1] + 1) * s
            draw.ellipse((px - rx * s, py - ry * s, px + rx * s, py + ry * s), fill=255)
        nests = _canvas_array(img, n, blur=n / 80)
        color = _mix(color, _jitter(rng, BLUE_GREY, 0.03), nests * 0.9)
        alpha = np.maximum(alpha, nests * 0.9 * sh.alpha)

    # Ulceration: a dark red-brown crust.
    if rng.random() < 0.25:
        c = _points_in_lesion(rng, 1, radius, 0.0, 0.5)[0]
        field = _noise(rng, n, 5) * 0.3 - np.hypot(x - c[0], y - c[1]) / (radius * rng.uniform(0.25, 0.45)) + 1
        ulc = _smoothstep(0.0, 0.25, field)
        color = _mix(color, _jitter(rng, (0.45, 0.14, 0.10), 0.04), ulc)
        alpha = np.maximum(alpha, ulc * 0.95)

    # Arborizing vessels, sharply in focus, the hallmark of BCC.
    img, draw, s = _canvas(n)
    for _ in range(int(rng.integers(3, 7))):
        p = _points_in_lesion(rng, 1, radius, 0.2, 0.8)[0]
        _vessel_tree(draw, rng, s, p, rng.uniform(0, 2 * np.pi), radius * rng.uniform(0.5, 0.9),
                     width=rng.uniform(2.5, 4.5) * n / 128, depth=int(rng.integers(2, 4)))
    vessels = _canvas_array(img, n) * _smoothstep(1.15, 0.95, sh.nr)
    color = _mix(color, _jitter(rng, RED, 0.04), vessels)
    alpha = np.maximum(alpha, vessels * 0.95)
    return color, alpha


def _render_akiec(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    radius = rng.uniform(0.42, 0.7)
    sh = _shape(rng, x, y, radius, rng.uniform(0, 0.25), rng.uniform(0.04, 0.12), 0.1,
                rng.uniform(0.10, 0.2))
    base = _jitter(rng, (0.84, 0.50, 0.48), 0.04)
    if rng.random() < 0.25:  # pigmented actinic keratosis
        base = _lerp_color(tuple(base), BROWN_LIGHT, rng.uniform(0.3, 0.6))
    color = np.broadcast_to(base, x.shape + (3,)).copy()
    color *= (1.0 + 0.07 * _fbm(rng, n, 6))[..., None]
    alpha = sh.alpha * rng.uniform(0.5, 0.8)

    # Strawberry pattern: a red pseudo-network around white-yellow follicular openings.
    freq = rng.uniform(8, 13)
    f1, f2, _ = _worley(rng, x, y, freq)
    follicles = np.exp(-((f1 / rng.uniform(0.18, 0.28)) ** 2)) * _smoothstep(1.1, 0.7, sh.nr)
    pseudo = np.exp(-(((f2 - f1) / 0.25) ** 2)) * sh.alpha
    color = _mix(color, _jitter(rng, (0.78, 0.28, 0.30), 0.03), pseudo * 0.5)
    color = _mix(color, _jitter(rng, YELLOW_WHITE, 0.02), follicles * 0.85)
    alpha = np.maximum(alpha, follicles * 0.8 * sh.alpha)

    # Scale: rough white-yellow patches.
    scale = _smoothstep(0.2, 0.7, _fbm(rng, n, 5) + 0.3 * _noise(rng, n, 24)) * sh.alpha
    scale *= rng.uniform(0.4, 0.85)
    color = _mix(color, _jitter(rng, YELLOW_WHITE, 0.03), scale)
    alpha = np.maximum(alpha, scale)

    # Dotted / glomerular vessels.
    m = int(rng.integers(5, 25))
    dots = _dots(n, _points_in_lesion(rng, m, radius, 0.0, 0.95), rng.uniform(0.008, 0.018, m), 0.3)
    color = _mix(color, _jitter(rng, RED, 0.04), dots * 0.9)
    alpha = np.maximum(alpha, dots * 0.9 * sh.alpha)
    return color, alpha


def _render_bkl(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    radius = rng.uniform(0.4, 0.7)
    sh = _shape(rng, x, y, radius, rng.uniform(0, 0.25), rng.uniform(0.03, 0.1), 0.06,
                rng.uniform(0.01, 0.035))  # sharply demarcated, "stuck-on"
    base = _lerp_color((0.74, 0.56, 0.47), BROWN, rng.uniform(0, 0.8))
    base = _jitter(rng, tuple(base), 0.03)
    color = np.broadcast_to(base, x.shape + (3,)).copy()
    alpha = sh.alpha * rng.uniform(0.75, 0.95)
    lentigo = rng.random() < 0.25  # solar lentigo: flat, light, moth-eaten border, few structures

    # Cerebriform gyri and sulci: thick cellular ridges, light crests and dark furrows.
    f1, f2, _ = _worley(rng, x + 0.1 * _noise(rng, n, 4), y + 0.1 * _noise(rng, n, 4),
                        rng.uniform(5, 9))
    sulci = np.exp(-(((f2 - f1) / rng.uniform(0.12, 0.22)) ** 2))
    crest = _smoothstep(0.6, 0.0, f1)
    depth = 0.15 if lentigo else rng.uniform(0.35, 0.6)
    color = _mix(color, BROWN_DARK, sulci * depth)
    color = _mix(color, (0.86, 0.74, 0.64), crest * depth * 0.5)
    # Waxy: a fine, slightly desaturated high-frequency texture.
    color *= (1.0 + 0.05 * _noise(rng, n, 28))[..., None]

    if not lentigo:
        # Milia-like cysts (white-yellow) and comedo-like openings (dark plugs).
        m = int(rng.integers(4, 16))
        cysts = _dots(n, _points_in_lesion(rng, m, radius, 0.0, 0.85), rng.uniform(0.012, 0.03, m), 0.5)
        color = _mix(color, _jitter(rng, YELLOW_WHITE, 0.02), cysts * 0.95)
        m = int(rng.integers(3, 14))
        comedo = _dots(n, _points_in_lesion(rng, m, radius, 0.0, 0.85), rng.uniform(0.012, 0.028, m), 0.3)
        color = _mix(color, (0.20, 0.13, 0.09), comedo * 0.9)
    return color, alpha


def _render_df(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    radius = rng.uniform(0.28, 0.45)
    sh = _shape(rng, x, y, radius, rng.uniform(0, 0.2), 0.02, 0.03, rng.uniform(0.05, 0.1))
    base = _jitter(rng, (0.70, 0.50, 0.40), 0.035)
    color = np.broadcast_to(base, x.shape + (3,)).copy()
    alpha = sh.alpha * rng.uniform(0.55, 0.8)
    # Delicate peripheral network: fine, light-brown, strongest in a ring.
    net = _network(rng, x, y, rng.uniform(16, 24), 0.1, warp=0.4)
    ring = _smoothstep(0.35, 0.75, sh.nr) * _smoothstep(1.15, 0.85, sh.nr)
    color = _mix(color, (0.45, 0.29, 0.19), net * ring * rng.uniform(0.5, 0.8))
    alpha = np.maximum(alpha, net * ring * 0.8 * sh.alpha)
    # Central white scar-like patch.
    c = rng.normal(0, 0.12 * radius, 2)
    rr = np.hypot(x - c[0], y - c[1]) / (radius * rng.uniform(0.3, 0.55))
    patch = _smoothstep(1.1, 0.7, rr + 0.25 * _noise(rng, n, 8))
    color = _mix(color, _jitter(rng, WHITE, 0.02), patch * rng.uniform(0.75, 0.95))
    alpha = np.maximum(alpha, patch * 0.9)
    # A faint pinkish halo around it.
    halo = _smoothstep(1.6, 1.0, sh.nr) * (1 - sh.alpha)
    color = _mix(color, PINK, halo)
    alpha = np.maximum(alpha, halo * 0.2)
    return color, alpha


def _render_vasc(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    radius = rng.uniform(0.3, 0.55)
    sh = _shape(rng, x, y, radius, rng.uniform(0, 0.25), rng.uniform(0.02, 0.07), 0.04,
                rng.uniform(0.015, 0.04))
    palette = np.array([(0.76, 0.12, 0.20), (0.52, 0.06, 0.14), (0.46, 0.12, 0.36),
                        (0.22, 0.10, 0.22)], np.float32)
    weights = rng.dirichlet([2.0, 1.5, 1.2, 0.4])
    septa = _jitter(rng, (0.86, 0.64, 0.66), 0.03)
    color = np.broadcast_to(septa, x.shape + (3,)).copy()
    # Red-purple lacunae: round cells separated by pale septa, each cell its own shade.
    wx = x + 0.03 * _noise(rng, n, 5)
    wy = y + 0.03 * _noise(rng, n, 5)
    f1, _, cid = _worley(rng, wx, wy, rng.uniform(5, 9), jitter=0.8)
    cells = int(cid.max()) + 1
    cell_color = palette[rng.choice(4, size=cells, p=weights)]
    cell_color = cell_color * rng.uniform(0.8, 1.1, (cells, 1)).astype(np.float32)
    # Lacunae of different sizes with soft rims.
    lac_r = rng.uniform(0.3, 0.55, cells).astype(np.float32)[cid]
    lac = _smoothstep(lac_r + 0.12, lac_r - 0.08, f1)
    color = color + (np.clip(cell_color[cid], 0, 1) - color) * lac[..., None]
    alpha = sh.alpha * rng.uniform(0.85, 0.97)
    if rng.random() < 0.3:  # whitish veil
        veil = _smoothstep(0.0, 0.8, _noise(rng, n, 4)) * sh.alpha * 0.45
        color = _mix(color, WHITE, veil)
    return color, alpha


_RENDERERS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "akiec": _render_akiec,
    "bcc": _render_bcc,
    "bkl": _render_bkl,
    "df": _render_df,
    "mel": _render_mel,
    "nv": _render_nv,
    "vasc": _render_vasc,
}

#: Base skin tones (light, pinkish, tan), jittered per lesion.
_SKIN_TONES = np.array(
    [(0.93, 0.80, 0.76), (0.90, 0.73, 0.68), (0.88, 0.70, 0.60), (0.95, 0.86, 0.84),
     (0.82, 0.62, 0.52), (0.91, 0.76, 0.78)],
    np.float32,
)


def _make_lesion(dx: str, rng: np.random.Generator, size: int) -> _Lesion:
    if dx not in _RENDERERS:
        raise EdgedermError(f"unknown class {dx!r}: the synthetic classes are {', '.join(CLASSES)}")
    x, y = _grid(size)
    color, alpha = _RENDERERS[dx](rng, x, y)
    # Real lesions are never flat: mottle the colour and fray the border a little.
    color = color * (1.0 + rng.uniform(0.05, 0.1) * _fbm(rng, size, 10))[..., None]
    fray = 1.0 - 0.5 * (1.0 - alpha) * np.clip(_noise(rng, size, 20), 0, None)
    alpha = alpha * fray
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] + rng.normal(0, 0.025, 3).astype(np.float32)
    hairy = rng.random()
    return _Lesion(
        dx=dx,
        color=np.clip(color, 0, 1).astype(np.float32),
        alpha=np.clip(alpha, 0, 1).astype(np.float32),
        skin=np.clip(skin, 0, 1),
        size=size,
        cast=(rng.uniform(0.96, 1.04, 3) * rng.uniform(0.88, 1.06)).astype(np.float32),
        vignette=float(rng.uniform(0.95, 1.45)) if rng.random() < 0.45 else None,
        hair=0.1 if hairy < 0.45 else 0.85,
        hair_count=(1, 6) if hairy < 0.8 else (8, 30),
        hair_color=_jitter(rng, (0.12, 0.09, 0.07) if rng.random() < 0.85 else (0.75, 0.7, 0.65), 0.03),
    )


# --------------------------------------------------------------------------------------------
# A view of a lesion: pose, skin, artefacts
# --------------------------------------------------------------------------------------------


def _warp(layer: np.ndarray, size: int, angle: float, scale: float, shift: np.ndarray, flip: bool) -> np.ndarray:
    """Bilinear resampling of an HxWxC canonical layer under rotation/scale/shift/flip; outside
    the layer everything (alpha included) is zero."""
    c = layer.shape[0]
    x, y = _grid(size)
    x, y = x - shift[0], y - shift[1]
    ca, sa = math.cos(angle), math.sin(angle)
    u = (ca * x + sa * y) / scale
    v = (-sa * x + ca * y) / scale
    if flip:
        u = -u
    # To the padded layer's pixel coordinates (one pixel of zeros around it).
    pu = (u + 1.0) * (c / 2.0) - 0.5 + 1.0
    pv = (v + 1.0) * (c / 2.0) - 0.5 + 1.0
    padded = np.pad(layer, ((1, 1), (1, 1), (0, 0)))
    pu = np.clip(pu, 0.0, c + 0.999)
    pv = np.clip(pv, 0.0, c + 0.999)
    u0 = np.floor(pu).astype(np.int64)
    v0 = np.floor(pv).astype(np.int64)
    fu = (pu - u0)[..., None].astype(np.float32)
    fv = (pv - v0)[..., None].astype(np.float32)
    u1 = np.minimum(u0 + 1, c + 1)
    v1 = np.minimum(v0 + 1, c + 1)
    top = padded[v0, u0] * (1 - fu) + padded[v0, u1] * fu
    bot = padded[v1, u0] * (1 - fu) + padded[v1, u1] * fu
    return top * (1 - fv) + bot * fv


def _skin(rng: np.random.Generator, tone: np.ndarray, size: int) -> np.ndarray:
    x, y = _grid(size)
    skin = np.broadcast_to(tone, (size, size, 3)).copy()
    # Low-frequency blotchiness (erythema, pigment) and a fine pore/furrow texture.
    skin = _mix(skin, (0.85, 0.55, 0.55), np.clip(_noise(rng, size, 3), 0, None) * rng.uniform(0.05, 0.2))
    skin *= (1.0 + 0.025 * _noise(rng, size, 5))[..., None]
    a = rng.uniform(0, np.pi)
    furrows = np.sin((np.cos(a) * x + np.sin(a) * y) * rng.uniform(25, 45) + 2.0 * _noise(rng, size, 4))
    skin *= (1.0 - rng.uniform(0.0, 0.03) * np.clip(furrows, 0, None) ** 4)[..., None]
    skin *= (1.0 + rng.uniform(0.01, 0.035) * _noise(rng, size, max(8, size // 3)))[..., None]
    # A few small freckles: class-independent brown spots, so "brown spot" alone is no giveaway.
    m = int(rng.poisson(2.0))
    if m:
        pts = rng.uniform(-0.95, 0.95, (m, 2))
        fr = _dots(size, pts, rng.uniform(0.01, 0.03, m), blur=size / 100)
        skin = _mix(skin, BROWN_LIGHT, fr * rng.uniform(0.3, 0.7))
    return skin


def _hairs(rng: np.random.Generator, img: np.ndarray, count: int, color: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    canvas, draw, s = _canvas(size)
    for _ in range(count):
        p0 = rng.uniform(-1.2, 1.2, 2)
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.5, 2.0)
        p2 = p0 + length * np.array([np.cos(ang), np.sin(ang)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.25, 2)  # bend: a quadratic Bezier curve
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        draw.line(_to_px(pts, s), fill=255, width=max(1, int(round(rng.uniform(0.8, 2.2) * size / 128))))
    mask = _canvas_array(canvas, size)
    return _mix(img, color, mask * rng.uniform(0.7, 0.95))


def _ruler(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    canvas, draw, s = _canvas(size)
    side = rng.integers(4)
    pos = rng.uniform(0.7, 0.9)
    step = rng.uniform(0.05, 0.08)
    start = rng.uniform(-0.9, -0.2)
    for i, t in enumerate(np.arange(start, start + rng.uniform(0.6, 1.4), step)):
        length = 0.08 if i % 5 == 0 else 0.04
        a = np.array([[t, pos], [t, pos + length]])
        if side % 2:
            a = a[:, ::-1]
        if side >= 2:
            a = -a
        draw.line(_to_px(a, s), fill=255, width=max(1, int(round(size / 128))))
    mask = _canvas_array(canvas, size)
    return _mix(img, (0.08, 0.08, 0.08), mask * rng.uniform(0.6, 0.9))


def _render_view(lesion: _Lesion, rng: np.random.Generator, size: int) -> np.ndarray:
    layer = np.concatenate([lesion.color, lesion.alpha[..., None]], axis=2)
    warped = _warp(
        layer, size,
        angle=rng.uniform(0, 2 * np.pi),
        scale=rng.uniform(0.82, 1.15),
        shift=rng.uniform(-0.12, 0.12, 2),
        flip=bool(rng.random() < 0.5),
    )
    color, alpha = warped[..., :3], warped[..., 3]
    skin = _skin(rng, lesion.skin, size)
    # Pigment sits in the skin: the skin's fine texture modulates the lesion too.
    texture = skin.mean(axis=2, keepdims=True) / float(lesion.skin.mean())
    img = skin * (1 - alpha[..., None]) + color * np.clip(texture, 0.85, 1.15) * alpha[..., None]

    if rng.random() < lesion.hair:
        img = _hairs(rng, img, int(rng.integers(*lesion.hair_count)), lesion.hair_color)
    if rng.random() < 0.15:
        img = _ruler(rng, img)

    # Illumination: gain, colour cast, linear gradient, radial fall-off.
    x, y = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    grad = 1.0 + rng.uniform(0, 0.12) * (np.cos(a) * x + np.sin(a) * y)
    falloff = 1.0 - rng.uniform(0, 0.12) * (x * x + y * y) / 2
    cast = lesion.cast * rng.uniform(0.98, 1.02, 3).astype(np.float32)
    img = img * (grad * falloff)[..., None] * cast

    # The round field of a contact dermatoscope: dark outside a circle (sometimes beyond corners).
    if lesion.vignette is not None:
        rv = lesion.vignette * rng.uniform(0.96, 1.04)
        cx, cy = rng.normal(0, 0.05, 2)
        field = _smoothstep(rv, rv - rng.uniform(0.04, 0.12), np.hypot(x - cx, y - cy))
        dark = rng.uniform(0.03, 0.12)
        img = img * field[..., None] + dark * (1 - field[..., None])

    img = img + np.float32(rng.uniform(0.003, 0.012)) * rng.standard_normal(img.shape, dtype=np.float32)
    out = (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    if rng.random() < 0.3:  # slight defocus
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9) * size / 128)))
    return out


def render_lesion(dx: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Render one synthetic dermoscopy image of class ``dx`` (a HAM10000 code) as uint8 HxWx3.

    A new lesion is drawn from ``rng`` and shown in one random view, with artefacts but without
    JPEG compression (``generate`` adds that when it saves).
    """
    if size < 16:
        raise EdgedermError(f"image size must be at least 16 px, got {size}")
    return _render_view(_make_lesion(dx, rng, size), rng, size)


# --------------------------------------------------------------------------------------------
# The data set on disk
# --------------------------------------------------------------------------------------------

_LOCALIZATIONS = ["back", "lower extremity", "trunk", "upper extremity", "abdomen", "face",
                  "chest", "foot", "neck", "scalp", "hand", "ear", "genital", "unknown"]
_LOC_P = np.array([22, 19, 13, 13, 12, 6, 4, 2.5, 2, 1.5, 1, 0.5, 0.5, 3], np.float64)
# How HAM10000 confirmed each class (histopathology, follow-up, expert consensus, confocal).
_DX_TYPE_P: dict[str, dict[str, float]] = {
    "nv": {"histo": 0.30, "follow_up": 0.55, "consensus": 0.13, "confocal": 0.02},
    "mel": {"histo": 1.0},
    "bcc": {"histo": 1.0},
    "akiec": {"histo": 1.0},
    "bkl": {"histo": 0.55, "consensus": 0.30, "confocal": 0.15},
    "df": {"histo": 0.50, "consensus": 0.50},
    "vasc": {"histo": 0.40, "consensus": 0.60},
}
_AGE_MEAN = {"nv": 45, "mel": 62, "bcc": 66, "akiec": 68, "bkl": 62, "df": 50, "vasc": 50}


def _class_counts(n_lesions: int, weights: dict[str, float]) -> dict[str, int]:
    """Largest-remainder allocation (exact proportions, deterministic), at least one lesion per
    class with positive weight when there are enough lesions."""
    total = sum(weights.values())
    raw = {c: n_lesions * w / total for c, w in weights.items()}
    counts = {c: int(math.floor(v)) for c, v in raw.items()}
    rest = n_lesions - sum(counts.values())
    for c in sorted(raw, key=lambda c: (counts[c] - raw[c], CLASSES.index(c)))[:rest]:
        counts[c] += 1
    if n_lesions >= len(weights):
        for c in weights:
            while counts[c] == 0:
                donor = max(counts, key=lambda k: counts[k])
                counts[donor] -= 1
                counts[c] += 1
    return counts


def _check_args(
    n_lesions: int, images_per_lesion: tuple[int, int], size: int, seed: int,
    class_weights: dict[str, float],
) -> None:
    if n_lesions < 1:
        raise EdgedermError(f"n_lesions must be at least 1, got {n_lesions}")
    if seed < 0:
        raise EdgedermError(f"seed must be a non-negative integer, got {seed}")
    lo, hi = images_per_lesion
    if not 1 <= lo <= hi:
        raise EdgedermError(f"images_per_lesion must be (lo, hi) with 1 <= lo <= hi, got {images_per_lesion}")
    if size < 16:
        raise EdgedermError(f"image size must be at least 16 px, got {size}")
    bad = sorted(set(class_weights) - set(CLASSES))
    if bad:
        raise EdgedermError(f"unknown class(es) {', '.join(bad)}: the synthetic classes are {', '.join(CLASSES)}")
    if any(w < 0 or not math.isfinite(w) for w in class_weights.values()) or sum(class_weights.values()) <= 0:
        raise EdgedermError("class_weights must be finite, non-negative and not all zero")


def _is_ours(path: Path) -> bool:
    """True for a folder that holds only what ``generate`` writes (so it may be replaced)."""
    names = {p.name for p in path.iterdir()}
    return MARKER_FILE in names and names <= {MARKER_FILE, METADATA_FILE, IMAGE_DIR}


def generate(
    out_dir: str | Path,
    *,
    n_lesions: int = 700,
    images_per_lesion: tuple[int, int] = (1, 3),
    size: int = 128,
    seed: int = 0,
    class_weights: dict[str, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dermoscopy data set in the HAM10000 layout to ``out_dir`` and return it.

    ``n_lesions`` lesions are split over the classes in the proportions of ``class_weights``
    (default ``DEFAULT_CLASS_WEIGHTS``; classes left out get none), each shown in ``lo..hi``
    images (``images_per_lesion``, inclusive) of ``size`` x ``size`` px. The same arguments give
    byte-identical files. The set is built in a temporary sibling folder and renamed into place,
    so an interrupted run never leaves a complete-looking set behind.

    An existing non-empty ``out_dir`` raises ``DataError`` unless ``overwrite`` is true; even
    then only a folder that a previous ``generate`` wrote is replaced, never arbitrary files.
    """
    out = Path(out_dir).expanduser()
    weights = {c: float(w) for c, w in (class_weights or DEFAULT_CLASS_WEIGHTS).items()}
    _check_args(n_lesions, images_per_lesion, size, seed, weights)
    weights = {c: w for c, w in weights.items() if w > 0}

    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise DataError(f"{out} is not empty; pass overwrite=True to replace it")
            if not _is_ours(out):
                raise DataError(f"{out} holds files that generate() did not write; refusing to replace it")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the data set should not be
    try:
        rows = _write_set(tmp, n_lesions, images_per_lesion, size, seed, weights)
        if out.exists():
            # Empty, or a previous synthetic set that overwrite=True may replace: move it aside
            # first so that `out` is always either the old set or the complete new one.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "set")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d synthetic images of %d lesions to %s", rows, n_lesions, out)
    return out


def _write_set(
    root: Path,
    n_lesions: int,
    images_per_lesion: tuple[int, int],
    size: int,
    seed: int,
    weights: dict[str, float],
) -> int:
    images = root / IMAGE_DIR
    images.mkdir()
    ss = np.random.SeedSequence(seed)
    meta_seq, lesions_seq = ss.spawn(2)
    meta_rng = np.random.default_rng(meta_seq)
    counts = _class_counts(n_lesions, weights)
    labels = np.array([c for c in CLASSES if c in counts for _ in range(counts[c])])
    labels = labels[meta_rng.permutation(len(labels))]
    lo, hi = images_per_lesion

    rows: list[dict[str, str]] = []
    image_no = 0
    # One independent stream per lesion: a lesion's look depends only on (seed, its number, dx).
    for i, (dx, lseq) in enumerate(zip(labels, lesions_seq.spawn(n_lesions)), start=1):
        rng = np.random.default_rng(lseq)
        lesion = _make_lesion(str(dx), rng, size)
        dx_types = _DX_TYPE_P[dx]
        meta = {
            "lesion_id": f"SYNL_{i:07d}",
            "dx": str(dx),
            "dx_type": str(rng.choice(list(dx_types), p=list(dx_types.values()))),
            "age": f"{float(np.clip(5 * round(rng.normal(_AGE_MEAN[dx], 14) / 5), 0, 85)):.1f}",
            "sex": str(rng.choice(["male", "female"], p=[0.54, 0.46])),
            "localization": str(rng.choice(_LOCALIZATIONS, p=_LOC_P / _LOC_P.sum())),
            "dataset": "synthetic",
        }
        for _ in range(int(rng.integers(lo, hi + 1))):
            image_no += 1
            image_id = f"SYN_{image_no:07d}"
            arr = _render_view(lesion, rng, size)
            quality = int(rng.integers(80, 96))
            Image.fromarray(arr).save(images / f"{image_id}.jpg", format="JPEG", quality=quality)
            rows.append({**meta, "image_id": image_id})

    # Metadata last: a folder without its CSV is never mistaken for a complete set.
    (root / MARKER_FILE).write_text(
        json.dumps(
            {
                "generator": "edgederm.data.synthetic",
                "version": GENERATOR_VERSION,
                "seed": seed,
                "n_lesions": n_lesions,
                "images_per_lesion": list(images_per_lesion),
                "size": size,
                "class_weights": weights,
                "n_images": len(rows),
            },
            indent=2,
        )
        + "\n"
    )
    with open(root / METADATA_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(METADATA_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
