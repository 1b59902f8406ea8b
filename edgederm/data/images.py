"""The one way edgederm decodes an image.

Training, the runtime, the bench and the accuracy gate all call ``load_image``, so an image means
the same pixels everywhere: EXIF orientation applied, every PIL mode turned into 8-bit RGB the same
way, and every unreadable file reported as an ``ImageError`` with a one-line message that names the
file and the cause (never a traceback from a DataLoader worker three epochs later).

A *ref* is a file path, or ``"<path>.npz::<key>[<index>]"`` for MedMNIST-style arrays (uint8, HxW
or HxWx3) stored in a NumPy ``.npz`` archive.

Memory is bounded twice (docs/decoding.md): a pixel limit refuses oversized images from their
header, before anything is decoded; and a caller that will shrink the image anyway passes
``decode_size`` (``edgederm.preprocess.decode_size(spec)``), so JPEGs are decoded at 1/2-1/8 scale
by libjpeg and other formats are box-reduced by an integer factor, both sides kept >= decode_size.
Mode conversions (16-bit, alpha, CMYK, palette) run in strips of rows, so they never hold a second
full-size copy of a large image.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgederm.data.records import Record, Skipped
from edgederm.errors import EdgedermError, ImageError

log = logging.getLogger(__name__)

# Dermoscopy photos are a few Mpx to ~25 Mpx; beyond 50 Mpx an image is a phone's 200-Mpx mode
# (a JPEG: decoded at reduced scale for a model it passes, since only decoded pixels count), a
# mistake, or a decompression bomb (a 250 kB PNG can declare 119 Mpx and unpack to GBs).
# Raise it with ``edgederm --max-pixels N`` or ``EDGEDERM_MAX_PIXELS=N``.
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "EDGEDERM_MAX_PIXELS"

# Mode conversions work on strips of about this many pixels (a few MB of temporaries each).
_STRIP_PIXELS = 1 << 20

_NPZ_REF = re.compile(r"^(?P<path>.+\.npz)::(?P<key>[^\[\]]+)\[(?P<index>-?\d+)\]$", re.IGNORECASE)

# PIL's own decompression-bomb guard is a module global (warning above ~89 Mpx, error above
# ~179 Mpx). We replace it by our per-call ``max_pixels`` (checked on the size we will actually
# decode, after JPEG draft), which means switching PIL's guard off while the header is parsed.
# Changing a global inside a call is only safe under a lock: the lock covers ``Image.open``
# (header parsing, microseconds), not the decode, so threads still decode in parallel.
_OPEN_LOCK = threading.Lock()

# Orientations 5-8 transpose the image, so width and height swap.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112

# Transparent pixels are composited on BLACK. Dermoscopy images are the only thing our models
# see: outside the circular field of view of a contact dermoscope the image is black, so a model
# has seen black borders around lesions thousands of times and white ones never. A transparent
# PNG is usually a cut-out (lesion kept, surrounding skin removed); black turns it into something
# close to a tight, vignetted dermoscopy field, whereas white would put out-of-distribution
# "paper" next to the lesion. Fully opaque RGBA images (the common case: PNG exports that carry
# an all-255 alpha) are unchanged either way.
ALPHA_BACKGROUND = (0, 0, 0)


@dataclass(frozen=True)
class _Source:
    """A parsed ref: a file, or one array element of an npz archive."""

    ref: str
    path: Path
    key: str | None = None
    index: int | None = None

    @property
    def name(self) -> str:
        # One-line messages name the file, not the full path (the path is on ImageError.ref).
        if self.key is None:
            return self.path.name or str(self.path)
        return f"{self.path.name}::{self.key}[{self.index}]"


def _parse_ref(ref: str | os.PathLike[str]) -> _Source:
    text = os.fspath(ref)
    m = _NPZ_REF.match(text)
    if m:
        return _Source(text, Path(m["path"]), m["key"], int(m["index"]))
    return _Source(text, Path(text))


def _error(src: _Source, cause: str) -> ImageError:
    # Keep messages on one line whatever PIL or the OS put in theirs.
    cause = " ".join(cause.split())
    err = ImageError(f"{src.name}: {cause}")
    err.ref = src.ref  # type: ignore[attr-defined]
    return err


def _check_file(src: _Source) -> None:
    """Turn the usual file-system problems into one-line causes before PIL sees the file."""
    try:
        st = src.path.stat()
    except FileNotFoundError:
        raise _error(src, f"file not found ({src.path.absolute()})") from None
    except PermissionError:
        raise _error(src, "permission denied") from None
    except OSError as exc:
        raise _error(src, f"cannot read file ({exc.strerror or exc})") from None
    if src.path.is_dir():
        raise _error(src, "is a directory, not an image file")
    if st.st_size == 0:
        raise _error(src, "empty file (0 bytes)")


def max_pixels_limit() -> int:
    """The pixel limit in force: ``$EDGEDERM_MAX_PIXELS`` if set (``edgederm --max-pixels`` sets
    it, so DataLoader workers inherit it), else ``DEFAULT_MAX_PIXELS``."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw.replace("_", "").replace(",", "")))
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise EdgedermError(f"{MAX_PIXELS_ENV}={raw!r} is not a positive number of pixels")
    return value


def _too_large(src: _Source, size: tuple[int, int], max_pixels: int) -> ImageError:
    w, h = size
    return _error(
        src,
        f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} pixels "
        f"(raise it with edgederm --max-pixels {w * h} or {MAX_PIXELS_ENV}={w * h})",
    )


def _open(src: _Source, fh: IO[bytes]) -> Image.Image:
    """``Image.open`` (header only) with PIL's global bomb guard off; errors become ImageError.

    We pass our own file handle so that we, not PIL, decide when it is closed: right after the
    decode, also for multi-frame files (MPO from phones, GIF) where PIL would keep it open.
    """
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fh)
        except UnidentifiedImageError:
            raise _error(src, _unidentified(src.path)) from None
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
            fmt = _magic_format(_head(src.path)) or src.path.suffix.lstrip(".").upper() or "image"
            raise _error(src, f"corrupt or truncated {fmt} header ({exc or type(exc).__name__})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


_MAGIC = [
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
]


def _head(path: Path, n: int = 512) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _magic_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def _unidentified(path: Path) -> str:
    """Why PIL could not identify a file: a damaged image, or something that is not an image."""
    head = _head(path)
    fmt = _magic_format(head)
    if fmt:
        return f"corrupt {fmt} (the header cannot be parsed)"
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html")):
        return "not an image (looks like an HTML page)"
    if head.startswith(b"version https://git-lfs"):
        return "not an image (a Git LFS pointer: run git lfs pull)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not an image (unrecognised format)"
    return "not an image (looks like a text file)"


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the size unreadable
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in _TRANSPOSING_ORIENTATIONS else (w, h)


_ORIENTATION_TRANSPOSE = {  # as ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation_transpose(img: Image.Image, src: _Source) -> Image.Transpose | None:
    try:
        return _ORIENTATION_TRANSPOSE.get(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception as exc:  # noqa: BLE001 - phones write broken EXIF; the pixels are still good
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", src.name, exc)
        return None


def _exif_transpose(img: Image.Image, src: _Source) -> Image.Image:
    try:
        # in_place: without a rotation to apply, the non-in-place variant copies the whole image.
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as exc:  # noqa: BLE001 - phones write broken EXIF; the pixels are still good
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", src.name, exc)
    return img


# ----------------------------------------------------------------------------------- modes -> RGB

def _strips(img: Image.Image, factor: int = 1) -> Iterator[tuple[int, Image.Image]]:
    """``(top row, strip)`` over ``img``. Strip heights are multiples of ``factor``, so reducing
    strip by strip gives exactly the pixels of reducing the whole image (box blocks never straddle
    two strips)."""
    w, h = img.size
    rows = max(factor, _STRIP_PIXELS // max(w, 1) // factor * factor)
    for top in range(0, h, rows):
        yield top, img.crop((0, top, w, min(h, top + rows)))


def _high_bit_full_scale(img: Image.Image, src: _Source) -> float:
    """The sample value that maps to 255 for a 16/32-bit integer or float single-channel image.

    PNG stores n-bit samples (n < 16) scaled to the full 16-bit range (the spec asks encoders to
    do so), so the usual case is full-range 16 bit: divide by 257 (65535 -> 255, 32896 -> 128).
    Some medical tools write 10/12-bit data *unscaled* into a 16-bit PNG and declare the depth in
    an sBIT chunk; we honour that when every sample fits the declared depth and the samples do not
    look scaled (a very dark, properly scaled image also fits). Clipping to 255 (what
    ``convert("L")`` does) would turn almost every 16-bit image white. The checks look at every
    sample, strip by strip, so a 10k x 10k image never gets a 64-bit copy.
    """
    if img.mode == "F":
        lo, hi = np.inf, -np.inf
        for _, strip in _strips(img):
            arr = np.asarray(strip, dtype=np.float64)
            arr = arr[~np.isnan(arr)]
            if arr.size:
                lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
        if lo < 0.0 or hi > 1.0:
            raise _error(src, f"float image with values in [{lo:g}, {hi:g}], expected [0, 1]")
        return 1.0
    lo, hi = 0, 0
    for i, (_, strip) in enumerate(_strips(img)):  # getextrema() refuses I;16B
        arr = np.asarray(strip)
        lo, hi = (int(arr.min()), int(arr.max())) if i == 0 else (min(lo, int(arr.min())), max(hi, int(arr.max())))
    if lo < 0 or hi > 65535:
        raise _error(src, f"{img.mode} image with values in [{lo}, {hi}], expected a 16-bit range")
    bits = _png_sbit(src.path) if img.format == "PNG" else None
    if bits is not None and 1 <= bits < 16 and hi < (1 << bits):
        shifted = replicated = True
        for _, strip in _strips(img):
            s, r = _looks_scaled(np.asarray(strip).astype(np.int64), bits)
            shifted, replicated = shifted and s, replicated and r
            if not (shifted or replicated):
                return float((1 << bits) - 1)
    return 65535.0


def _looks_scaled(arr: np.ndarray, bits: int) -> tuple[bool, bool]:
    """Whether 16-bit samples are n-bit values scaled up: (by a shift, by left-bit replication)."""
    shift = 16 - bits
    v = arr >> shift
    shifted = bool(np.all((arr & ((1 << shift) - 1)) == 0))
    rep = np.zeros_like(arr)
    pos = 16
    while pos > 0:
        pos -= bits
        rep |= (v << pos) if pos >= 0 else (v >> -pos)
    return shifted, bool(np.all(rep == arr))


def _high_bit_strip(strip: Image.Image, full: float) -> Image.Image:
    arr = np.asarray(strip).astype(np.float64)
    if strip.mode == "F":
        arr = np.nan_to_num(arr)
    return Image.fromarray(np.round(arr * (255.0 / full)).astype(np.uint8), "L").convert("RGB")


def _png_sbit(path: Path) -> int | None:
    """The significant bits of a greyscale PNG from its sBIT chunk (PIL does not parse it)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, ctype = struct.unpack(">I4s", head)
                if ctype == b"sBIT":
                    data = fh.read(length)
                    return max(data) if data else None
                if ctype in (b"IDAT", b"IEND"):
                    return None  # sBIT must precede IDAT
                fh.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return None


def _composite(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema() == (255, 255):
        return rgba.convert("RGB")
    bg = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def _rgb_converter(img: Image.Image, src: _Source) -> Callable[[Image.Image], Image.Image] | None:
    """The per-pixel function (applied to strips of ``img``) that gives 8-bit RGB; None for RGB."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return None
    if mode in ("I", "F") or mode.startswith("I;16"):
        full = _high_bit_full_scale(img, src)
        return lambda strip: _high_bit_strip(strip, full)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        return _composite

    def convert(strip: Image.Image) -> Image.Image:
        try:
            # CMYK (PIL already undoes Adobe's inverted CMYK when reading the JPEG), L, 1, P,
            # YCbCr, LAB, HSV: PIL's conversions are exact enough for everything we read.
            return strip.convert("RGB")
        except (ValueError, OSError) as exc:
            raise _error(src, f"unsupported image mode {mode} ({exc})") from None

    return convert


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """Any decoded PIL image -> 8-bit RGB, the edgederm way (alpha: see ``ALPHA_BACKGROUND``).

    For images that do not come from ``load_image`` (e.g. a camera frame in the runtime); ``name``
    is used in error messages.
    """
    return _to_rgb(img, _Source(name, Path(name)))


def _to_rgb(img: Image.Image, src: _Source, factor: int = 1) -> Image.Image:
    """8-bit RGB, box-reduced by ``factor``: the same pixels as converting the whole image and
    then ``reduce(factor)``, computed strip by strip so only the output is full-size."""
    convert = _rgb_converter(img, src)
    if convert is None:
        return img.reduce(factor) if factor > 1 else img
    w, h = img.size
    if w * h <= _STRIP_PIXELS:
        out = convert(img)
        return out.reduce(factor) if factor > 1 else out
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    for top, strip in _strips(img, factor):
        rgb = convert(strip)
        out.paste(rgb.reduce(factor) if factor > 1 else rgb, (0, top // factor))
    return out


def reduce_factor(size: tuple[int, int], decode_size: int | None) -> int:
    """The integer box-reduction that keeps both sides of ``size`` >= ``decode_size`` (1: none)."""
    if not decode_size:
        return 1
    return max(1, min(size[0] // int(decode_size), size[1] // int(decode_size)))


# -------------------------------------------------------------------------------------- npz refs

def _npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran_order, dtype) of the .npy stream at ``fh``; None for an unknown version."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    return None


class _NpzArrays:
    """Arrays of npz archives, memory-mapped when stored uncompressed, else loaded and cached.

    Loading a 1 GB MedMNIST array once per image would be hopeless; ``np.load`` of an npz cannot
    memory-map, but an uncompressed member is a plain ``.npy`` at a known offset in the zip file.
    """

    def __init__(self, max_loaded: int = 2) -> None:
        self._cache: OrderedDict[tuple[str, str, int, int], np.ndarray] = OrderedDict()
        self._max = max_loaded
        self._lock = threading.Lock()

    def get(self, src: _Source) -> np.ndarray:
        assert src.key is not None
        _check_file(src)
        st = src.path.stat()
        cache_key = (str(src.path.resolve()), src.key, st.st_mtime_ns, st.st_size)
        with self._lock:
            if cache_key in self._cache:
                self._cache.move_to_end(cache_key)
                return self._cache[cache_key]
        arr = self._read(src)
        with self._lock:
            self._cache[cache_key] = arr
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return arr

    def shape(self, src: _Source) -> tuple[int, ...]:
        _check_file(src)
        try:
            with zipfile.ZipFile(src.path) as zf:
                info = self._member(zf, src)
                with zf.open(info) as fh:
                    header = _npy_header(fh)
            if header is None:
                return tuple(self.get(src).shape)
            return tuple(header[0])
        except ImageError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise _error(src, f"corrupt npz archive ({exc})") from None

    @staticmethod
    def _member(zf: zipfile.ZipFile, src: _Source) -> zipfile.ZipInfo:
        try:
            return zf.getinfo(f"{src.key}.npy")
        except KeyError:
            keys = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
            raise _error(src, f"no array '{src.key}' in the archive (it has: {', '.join(keys)})") from None

    def _read(self, src: _Source) -> np.ndarray:
        try:
            with zipfile.ZipFile(src.path) as zf:
                info = self._member(zf, src)
                header = None
                if info.compress_type == zipfile.ZIP_STORED:
                    with open(src.path, "rb") as fh:
                        fh.seek(info.header_offset)
                        local = fh.read(30)
                        name_len, extra_len = struct.unpack("<HH", local[26:30])
                        fh.seek(info.header_offset + 30 + name_len + extra_len)
                        header = _npy_header(fh)
                        offset = fh.tell()
                if header is not None:
                    shape, fortran, dtype = header
                    if dtype.hasobject:
                        raise _error(src, "array holds Python objects, expected uint8 pixels")
                    return np.memmap(
                        src.path, dtype=dtype, mode="r", offset=offset, shape=shape,
                        order="F" if fortran else "C",
                    )
                # Compressed (savez_compressed): decompress once, keep the array cached.
                with zf.open(info) as fh:
                    return np.lib.format.read_array(fh, allow_pickle=False)
        except ImageError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
            raise _error(src, f"corrupt npz archive ({exc})") from None


_NPZ = _NpzArrays()


def _npz_image(src: _Source, max_pixels: int) -> Image.Image:
    arr = _NPZ.get(src)
    assert src.index is not None
    if arr.ndim not in (3, 4):
        raise _error(src, f"array '{src.key}' has shape {arr.shape}, expected N x H x W (x C)")
    n = arr.shape[0]
    if not -n <= src.index < n:
        raise _error(src, f"index {src.index} out of range: '{src.key}' holds {n} images")
    if arr.dtype != np.uint8:
        raise _error(src, f"array '{src.key}' is {arr.dtype}, expected uint8 pixels")
    item = np.asarray(arr[src.index])
    h, w = item.shape[:2]
    if h * w > max_pixels:
        raise _too_large(src, (w, h), max_pixels)
    if item.ndim == 3 and item.shape[2] == 1:
        item = item[:, :, 0]
    if item.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(item), "L").convert("RGB")
    if item.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(item), "RGB")
    if item.shape[2] == 4:
        return _composite(Image.fromarray(np.ascontiguousarray(item), "RGBA"))
    raise _error(src, f"image has {item.shape[2]} channels, expected 1, 3 or 4")


# ------------------------------------------------------------------------------------ public API

def load_image(
    ref: str | os.PathLike[str],
    *,
    max_pixels: int | None = None,
    decode_size: int | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``ref`` into an 8-bit RGB image with its EXIF orientation applied.

    ``decode_size``: the caller will shrink the image anyway (``edgederm.preprocess.decode_size``
    gives the value for a preprocessing spec), so decode it smaller while both sides stay at least
    ``decode_size``: JPEGs at 1/2, 1/4 or 1/8 scale inside libjpeg (a 10000x10000 photo then costs
    ~1/64 of the time and memory), then every format box-reduced by the largest integer factor
    that keeps the bound (``Image.reduce``). ``None`` decodes every pixel (bit-identical to the
    file). ``draft_size`` is the old name of ``decode_size``.

    ``max_pixels`` (default: ``max_pixels_limit()``, i.e. ``$EDGEDERM_MAX_PIXELS`` or 50 Mpx)
    bounds the pixels that are actually decoded (after JPEG draft); larger images are refused from
    their header, before any pixel is decoded.

    Every failure (missing, empty, not an image, corrupt, truncated, too large) is an
    ``ImageError`` whose message is one line naming the file and the cause.
    """
    decode_size = decode_size or draft_size
    limit = max_pixels_limit() if max_pixels is None else int(max_pixels)
    src = _parse_ref(ref)
    if src.key is not None:
        return _npz_image(src, limit)

    _check_file(src)
    try:
        fh = open(src.path, "rb")
    except OSError as exc:
        raise _error(src, f"cannot open file ({exc.strerror or exc})") from None
    with fh:
        img = _open(src, fh)
        fmt = img.format or src.path.suffix.lstrip(".").upper() or "image"
        try:
            if decode_size and fmt in ("JPEG", "MPO"):
                # Header-only; must precede load(). "RGB" leaves CMYK/greyscale JPEGs in their mode.
                img.draft("RGB", (int(decode_size), int(decode_size)))
            if img.size[0] * img.size[1] > limit:
                raise _too_large(src, img.size, limit)
            # Decode everything now, so a truncated file fails here and not later in a worker.
            # (We never set ImageFile.LOAD_TRUNCATED_IMAGES: a half-grey lesion is not a lesion.)
            img.load()
        except ImageError:
            raise
        except MemoryError:
            raise _error(src, f"out of memory decoding {img.size[0]}x{img.size[1]} {fmt}") from None
        except (OSError, SyntaxError, ValueError, struct.error, EOFError, Image.DecompressionBombError) as exc:
            msg = str(exc) or type(exc).__name__
            if "truncated" in msg.lower() or isinstance(exc, EOFError):
                raise _error(src, f"truncated {fmt} ({msg})") from None
            raise _error(src, f"corrupt {fmt} ({msg})") from None
    factor = reduce_factor(img.size, decode_size)
    try:
        out = _to_rgb(img, src, factor)
    except MemoryError:
        raise _error(src, f"out of memory converting {img.size[0]}x{img.size[1]} {img.mode} {fmt}") from None
    if out is img:
        return _exif_transpose(img, src)
    # Convert/reduce first, rotate the (smaller) result: the same pixels for a per-pixel
    # conversion; after a reduce the box grid is anchored at the stored image's top-left corner.
    method = _orientation_transpose(img, src)
    out.info.pop("exif", None)  # reduce() copies info; the orientation is applied below
    return out.transpose(method) if method is not None else out


def image_size(ref: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` as ``load_image`` would return it (orientation applied), from headers only."""
    src = _parse_ref(ref)
    if src.key is not None:
        shape = _NPZ.shape(src)
        if len(shape) not in (3, 4):
            raise _error(src, f"array '{src.key}' has shape {shape}, expected N x H x W (x C)")
        if not -shape[0] <= (src.index or 0) < shape[0]:
            raise _error(src, f"index {src.index} out of range: '{src.key}' holds {shape[0]} images")
        return int(shape[2]), int(shape[1])
    _check_file(src)
    try:
        with open(src.path, "rb") as fh:
            return _oriented_size(_open(src, fh))
    except OSError as exc:
        raise _error(src, f"cannot open file ({exc.strerror or exc})") from None


@dataclass
class ImageStream:
    """Iterate ``(record, image)`` pairs, skipping (or raising on) unreadable images.

    After iteration ``skipped`` lists what could not be read, with the one-line reason, so a CLI
    can end with ``summary()`` -> "skipped 3 unreadable images".
    """

    records: Iterable[Record]
    on_error: Literal["skip", "raise"] = "skip"
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', not {self.on_error!r}")

    def __iter__(self) -> Iterator[tuple[Record, Image.Image]]:
        for rec in self.records:
            try:
                img = load_image(rec.ref, **self.load_kwargs)
            except ImageError as exc:
                if self.on_error == "raise":
                    raise
                log.warning("skipping %s", exc)
                self.skipped.append(Skipped(rec.image_id, str(exc)))
                continue
            yield rec, img

    def summary(self) -> str:
        n = len(self.skipped)
        if not n:
            return ""
        return f"skipped {n} unreadable image{'s' if n != 1 else ''}"


def iter_images(
    records: Iterable[Record],
    *,
    on_error: Literal["skip", "raise"] = "skip",
    max_pixels: int | None = None,
    decode_size: int | None = None,
) -> ImageStream:
    """``for record, image in iter_images(index): ...``; then read ``.skipped`` / ``.summary()``."""
    return ImageStream(
        records, on_error=on_error, load_kwargs={"max_pixels": max_pixels, "decode_size": decode_size}
    )
