"""Bounded decode (docs/decoding.md): the pixel limit, spec-driven reduced decoding, exact_decode.

Real files throughout: 16-bit and RGBA PNGs and JPEGs written here, decoded by the real code;
the memory test measures a fresh process's peak RSS.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgederm.card import card_problems
from edgederm.data import images
from edgederm.data.images import MAX_PIXELS_ENV, load_image
from edgederm.errors import EdgedermError, ImageError
from edgederm.preprocess import PreprocessSpec, decode_size, spec_for_size
from edgederm.runtime.base import Predictor
from helpers import run_cli, tiny_card, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)


def _gray16(path: Path, w: int, h: int, seed: int = 0) -> np.ndarray:
    """A real 16-bit greyscale PNG: a gradient plus noise, so every sample is used."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = ((xx * 40503 // w + yy * 20011 // h) % 65536 + rng.integers(0, 500, (h, w))).clip(0, 65535).astype(np.uint16)
    Image.fromarray(arr).save(path, compress_level=1)  # noise compresses slowly at the default level
    assert Image.open(path).mode == "I;16"
    return arr


def _rgba(path: Path, w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    arr[: h // 3, :, 3] = 255  # an opaque band, a half-transparent one, random alpha below
    arr[h // 3: 2 * h // 3, :, 3] = 128
    Image.fromarray(arr, "RGBA").save(path)
    return arr


def _photo(path: Path, w: int, h: int) -> None:
    """A smooth colour field with a dark blob (JPEG-friendly, like a photograph)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blob = np.exp(-(((xx - w / 2) / (w / 5)) ** 2 + ((yy - h / 2) / (h / 5)) ** 2))
    rgb = np.stack([200 - 120 * blob, 150 - 100 * blob + 20 * np.sin(xx / 37), 130 - 90 * blob], -1)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path, quality=92)


# ---------------------------------------------------------------------------------- the rule

def test_decode_size_rule():
    assert decode_size(spec_for_size(224)) == 512  # 2 x the shorter-side target round(224 / 0.875)
    assert decode_size(spec_for_size(224, crop_pct=1.0)) == 448
    assert decode_size(PreprocessSpec(input_size=(224, 320), resize="stretch")) == 640
    assert decode_size(PreprocessSpec(input_size=(224, 224), resize="pad")) == 448
    assert decode_size(spec_for_size(224, exact_decode=True)) is None
    assert decode_size(spec_for_size(224), crops=True) is None


def test_exact_decode_serialised_only_when_set():
    plain = spec_for_size(224)
    assert "exact_decode" not in plain.to_dict()  # older cards keep their bytes and digest
    exact = plain.with_(exact_decode=True)
    assert exact.to_dict()["exact_decode"] is True
    assert PreprocessSpec.from_dict(exact.to_dict()) == exact
    assert exact.digest() != plain.digest()
    card = tiny_card().to_dict()
    card["preprocessing"]["exact_decode"] = "yes"
    assert any("exact_decode" in p for p in card_problems(card))


# ------------------------------------------------------------------------- reduced decoding

def test_16bit_png_reduce_path_equals_exact_then_reduce(tmp_path):
    p = tmp_path / "g16.png"
    arr = _gray16(p, 3000, 2000)
    exact = load_image(p)
    # The exact path (converted in strips) is the per-sample rule: round(v * 255 / 65535).
    ref = np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(exact), np.repeat(ref[..., None], 3, axis=2))
    small = load_image(p, decode_size=512)
    assert small.size == (1000, 667)  # factor min(3000 // 512, 2000 // 512) = 3, both sides >= 512
    np.testing.assert_array_equal(np.asarray(small), np.asarray(exact.reduce(3)))


def test_rgba_png_reduce_path_equals_composite_then_reduce(tmp_path):
    p = tmp_path / "rgba.png"
    _rgba(p, 2100, 1500)
    black = Image.new("RGBA", (2100, 1500), (0, 0, 0, 255))
    composite = Image.alpha_composite(black, Image.open(p).convert("RGBA")).convert("RGB")
    np.testing.assert_array_equal(np.asarray(load_image(p)), np.asarray(composite))
    small = load_image(p, decode_size=700)
    assert small.size == (1050, 750)  # factor min(2100 // 700, 1500 // 700) = 2
    np.testing.assert_array_equal(np.asarray(small), np.asarray(composite.reduce(2)))


def test_jpeg_draft_applies_and_stays_close(tmp_path):
    p = tmp_path / "photo.jpg"
    _photo(p, 4000, 3000)
    exact = load_image(p)
    t0 = time.perf_counter()
    small = load_image(p, decode_size=512)
    assert time.perf_counter() - t0 < 2.0
    assert small.size == (1000, 750)  # libjpeg's 1/4 scale; a further 2x would leave 375 < 512
    diff = np.abs(np.asarray(small, np.int16) - np.asarray(exact.reduce(4), np.int16))
    assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())
    # What a 224-px model sees differs by about a grey level.
    spec = spec_for_size(224)
    d = np.abs(np.asarray(spec.geometric(small), np.int16) - np.asarray(spec.geometric(exact), np.int16))
    assert d.max() <= 3, d.max()


def test_exif_rotation_applied_after_reduce(tmp_path):
    arr = np.full((1200, 1800, 3), 128, np.uint8)
    arr[:300, :300] = (255, 0, 0)  # red in the stored top-left corner
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    p = tmp_path / "phone.png"
    img.save(p, exif=exif)
    small = load_image(p, decode_size=400)
    assert small.size == (400, 600)  # 3x reduced, then rotated
    assert tuple(np.asarray(small)[10, -10]) == (255, 0, 0)  # top-left went to top-right
    assert 0x0112 not in small.getexif()  # applied once, not again downstream


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_rss_of_a_large_16bit_png_stays_bounded(tmp_path):
    # 25 Mpx of 16-bit samples (50 MB decoded). Before the strip-wise conversion this took ~750 MB
    # of 64-bit copies on top of the decode; now: the decode, the RGB output, a few MB of strips.
    p = tmp_path / "big16.png"
    _gray16(p, 5000, 5000)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, i.e. pytest's own peak.
    child = (
        "import json, re, sys\n"
        "from edgederm.data.images import load_image\n"
        "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
        "base = hwm()\n"
        "img = load_image(sys.argv[1], decode_size=int(sys.argv[2]) or None)\n"
        "print(json.dumps([img.size, base, hwm()]))\n"
    )
    peaks = {}
    for dsize in (0, 512):
        out = subprocess.run([sys.executable, "-c", child, str(p), str(dsize)], capture_output=True, text=True,
                             cwd=REPO, check=True)
        size, base_kb, peak_kb = json.loads(out.stdout)
        assert size == ([5000, 5000] if not dsize else [556, 556])  # 9x reduced
        peaks[dsize] = (peak_kb - base_kb) / 1024
    assert peaks[0] < 300, peaks  # 50 MB decode + 75 MB RGB output (+ allocator slack)
    assert peaks[512] < 150, peaks  # the decode; the output is 556 x 556


# --------------------------------------------------------------------------------- the limit

def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header says w x h and whose pixel data is a few bytes: only a decoder that
    refuses from the header reports the size; one that decodes reports a truncated file."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_default_limit_refuses_from_the_header(tmp_path):
    p = _png_header_only(tmp_path / "bomb.png", 10_900, 10_900)
    t0 = time.perf_counter()
    with pytest.raises(ImageError) as info:
        load_image(p, decode_size=512)  # a reduced decode still needs every PNG pixel: refused
    assert time.perf_counter() - t0 < 0.5
    msg = str(info.value)
    assert msg == ("bomb.png: 10900x10900 = 118,810,000 pixels exceeds the limit of 50,000,000 pixels "
                   "(raise it with edgederm --max-pixels 118810000 or EDGEDERM_MAX_PIXELS=118810000)")
    # Under a raised limit the same file is decoded, and found to be truncated.
    with pytest.raises(ImageError, match="truncated|corrupt"):
        load_image(p, max_pixels=200_000_000)


def test_jpeg_limit_counts_the_drafted_pixels(tmp_path):
    p = tmp_path / "big.jpg"
    Image.new("RGB", (8000, 7000), (180, 90, 60)).save(p, quality=50)  # 56 Mpx > 50 Mpx
    with pytest.raises(ImageError, match="56,000,000 pixels exceeds the limit of 50,000,000"):
        load_image(p)
    assert load_image(p, decode_size=512).size == (1000, 875)  # decoded at 1/8: 0.9 Mpx


def test_env_overrides_the_limit(tmp_path, monkeypatch):
    p = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(p)
    monkeypatch.setenv(MAX_PIXELS_ENV, "9999")
    assert images.max_pixels_limit() == 9999
    with pytest.raises(ImageError, match="limit of 9,999 pixels"):
        load_image(p)
    assert load_image(p, max_pixels=10_000).size == (100, 100)  # an explicit argument wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "1e4")
    assert load_image(p).size == (100, 100)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(EdgedermError, match="EDGEDERM_MAX_PIXELS='lots' is not a positive number of pixels"):
        load_image(p)


def test_cli_max_pixels_option(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "")  # restored after the test: the CLI sets it in-process
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    p = tmp_path / "small.png"
    Image.new("RGB", (100, 100), (120, 80, 60)).save(p)
    code, out, err = run_cli(capsys, "--max-pixels", "9999", "predict", ckpt, p, "--json")
    assert "small.png: 100x100 = 10,000 pixels exceeds the limit of 9,999 pixels" in err
    code, out, err = run_cli(capsys, "--max-pixels", "10000", "predict", ckpt, p, "--json")
    assert code == 0 and "exceeds" not in err and "small.png" in out
    code, out, err = run_cli(capsys, "--max-pixels", "0", "predict", ckpt, p)
    assert code == 2 and "--max-pixels" in err


# ----------------------------------------------------------------------- Predictor.load_image

def _predictor(spec: PreprocessSpec, **model: object) -> Predictor:
    card = tiny_card()
    card.preprocessing = spec
    card.model.update(model)
    return Predictor(Path("model.x"), card)


def test_predictor_load_image_follows_the_spec(tmp_path):
    p = tmp_path / "photo.jpg"
    _photo(p, 4000, 3000)
    g = tmp_path / "g16.png"
    _gray16(g, 3000, 2000)
    pred = _predictor(spec_for_size(224))
    assert pred.decode_size == 512
    assert pred.load_image(p).size == (1000, 750)
    assert pred.load_image(g).size == (1000, 667)
    exact = _predictor(spec_for_size(224, exact_decode=True))
    assert exact.decode_size is None
    np.testing.assert_array_equal(np.asarray(exact.load_image(p)), np.asarray(load_image(p)))
    np.testing.assert_array_equal(np.asarray(exact.load_image(g)), np.asarray(load_image(g)))
    # A cropping segmenter keeps only part of the image: every pixel is decoded.
    seg = _predictor(spec_for_size(224), segmenter={"checkpoint": "seg.pt", "mode": "mask+crop"})
    assert seg.decode_size is None
    assert _predictor(spec_for_size(224), segmenter={"checkpoint": "seg.pt", "mode": "mask"}).decode_size == 512


def test_runtime_predictor_decodes_per_its_card(tmp_path):
    from edgederm.runtime import load

    pred = load(tiny_checkpoint(tmp_path / "ens.pt", size=32, members=2))
    assert pred.decode_size == decode_size(spec_for_size(32)) == 74
    p = tmp_path / "g.png"
    _gray16(p, 600, 450)
    img = pred.load_image(p)
    assert img.size == (100, 75)  # 6x reduced, both sides >= 74
    # What predict_proba sees for a path is what load_image returns.
    np.testing.assert_allclose(pred.predict_proba([p], tta=False), pred.predict_proba([img], tta=False), rtol=0, atol=0)
