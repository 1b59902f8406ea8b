"""load_image / image_size / iter_images on every odd or broken file we could build, and real data."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import real_data_set
from edgederm.data.images import _NPZ, ALPHA_BACKGROUND, _parse_ref, image_size, iter_images, load_image, to_rgb
from edgederm.data.records import Record
from edgederm.errors import ImageError


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def _jpeg(path: Path, size=(64, 48), seed: int = 0, **save) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90, **save)
    return path


def _raw_png(path: Path, arr: np.ndarray, color_type: int, sbit: bytes | None = None) -> Path:
    """A 16-bit PNG written byte by byte (so the test does not depend on what PIL can write)."""
    h, w = arr.shape[:2]
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    if sbit is not None:
        body += chunk(b"sBIT", sbit)
    body += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# ------------------------------------------------------------------------------- broken files

def _one_line_error(ref, *, startswith: str, contains: str, **kw) -> str:
    with pytest.raises(ImageError) as info:
        load_image(ref, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(startswith), msg
    assert contains in msg, msg
    assert info.value.ref == str(ref)
    return msg


def test_missing_file(tmp_path):
    _one_line_error(tmp_path / "ISIC_0000001.jpg", startswith="ISIC_0000001.jpg: ", contains="file not found")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.touch()
    _one_line_error(p, startswith="empty.jpg: ", contains="empty file (0 bytes)")


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("lesion_id,image_id\nHAM_1,ISIC_1\n")
    _one_line_error(p, startswith="notes.jpg: ", contains="not an image (looks like a text file)")


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.png"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _one_line_error(p, startswith="noise.png: ", contains="not an image")


def test_directory(tmp_path):
    d = tmp_path / "folder.jpg"
    d.mkdir()
    _one_line_error(d, startswith="folder.jpg: ", contains="directory")


def test_truncated_jpeg_fails_at_load_not_later(tmp_path):
    data = _jpeg(tmp_path / "full.jpg", size=(256, 192)).read_bytes()
    cut = tmp_path / "ISIC_123.jpg"
    cut.write_bytes(data[: len(data) // 2])
    _one_line_error(cut, startswith="ISIC_123.jpg: truncated JPEG (", contains="truncated")


def test_truncated_png(tmp_path):
    p = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    cut = tmp_path / "half.png"
    cut.write_bytes(data[: len(data) // 2])
    _one_line_error(cut, startswith="half.png: truncated PNG", contains="truncated")


def test_corrupt_jpeg_header(tmp_path):
    data = bytearray(_jpeg(tmp_path / "ok.jpg").read_bytes())
    dht = data.index(b"\xff\xc4")  # Huffman tables: overwrite them with garbage
    data[dht + 4 : dht + 40] = b"\xff" * 36
    p = tmp_path / "bad.jpg"
    p.write_bytes(bytes(data))
    _one_line_error(p, startswith="bad.jpg: corrupt JPEG", contains="header")


def test_corrupt_png_data(tmp_path):
    p = tmp_path / "ok.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    data = bytearray(p.read_bytes())
    i = data.index(b"IDAT")
    data[i + 10 : i + 60] = b"\x00" * 50
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    _one_line_error(bad, startswith="bad.png: corrupt PNG", contains="(")


def test_truncated_header(tmp_path):
    p = tmp_path / "stub.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00")
    _one_line_error(p, startswith="stub.png: corrupt", contains="PNG")


# -------------------------------------------------------------------------------------- modes

def test_rgb_jpeg_passes_through(tmp_path):
    p = _jpeg(tmp_path / "a.jpg", size=(64, 48))
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (64, 48)
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(p).convert("RGB")))


def test_cmyk_jpeg(tmp_path):
    # PIL writes CMYK JPEGs the Adobe way (inverted, APP14 marker), so this also covers the
    # inverted-CMYK files Photoshop exports.
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (255, 0, 0, 0)).save(p, quality=95)  # pure cyan
    assert Image.open(p).mode == "CMYK" and "adobe" in Image.open(p).info
    px = _rgb(load_image(p))[16, 16]
    assert px[0] < 10 and px[1] > 245 and px[2] > 245


def test_grayscale_jpeg(tmp_path):
    p = tmp_path / "gray.jpg"
    Image.new("L", (20, 10), 77).save(p, quality=100)
    out = _rgb(load_image(p))
    assert out.shape == (10, 20, 3)
    assert np.all(np.abs(out - 77) <= 1)


def test_rgba_png_composited_on_black(tmp_path):
    assert ALPHA_BACKGROUND == (0, 0, 0)
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[...] = (200, 100, 50, 255)  # opaque: unchanged
    arr[0, 0] = (200, 100, 50, 0)  # transparent: background
    arr[1, 1] = (200, 100, 50, 128)  # half: blended with black
    p = tmp_path / "cutout.png"
    Image.fromarray(arr, "RGBA").save(p)
    out = _rgb(load_image(p))
    assert out[2, 2].tolist() == [200, 100, 50]
    assert out[0, 0].tolist() == [0, 0, 0]
    assert np.all(np.abs(out[1, 1] - np.array([100, 50, 25])) <= 1)


def test_la_png(tmp_path):
    p = tmp_path / "la.png"
    arr = np.stack([np.full((3, 3), 180, np.uint8), np.full((3, 3), 255, np.uint8)], axis=-1)
    arr[0, 0, 1] = 0
    Image.fromarray(arr, "LA").save(p)
    out = _rgb(load_image(p))
    assert out[1, 1].tolist() == [180, 180, 180]
    assert out[0, 0].tolist() == [0, 0, 0]


def test_palette_png_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30, 250, 250, 250] + [0] * (256 * 3 - 9))
    pal.putpixel((0, 0), 2)
    p = tmp_path / "pal.png"
    pal.save(p)
    out = _rgb(load_image(p))
    assert out[1, 1].tolist() == [10, 200, 30] and out[0, 0].tolist() == [250, 250, 250]

    p2 = tmp_path / "pal_t.png"
    pal.save(p2, transparency=2)  # palette entry 2 is transparent (tRNS)
    out2 = _rgb(load_image(p2))
    assert out2[1, 1].tolist() == [10, 200, 30] and out2[0, 0].tolist() == [0, 0, 0]


def test_one_bit_png(tmp_path):
    p = tmp_path / "mask.png"
    img = Image.new("1", (5, 5), 0)
    img.putpixel((2, 2), 1)
    img.save(p)
    out = _rgb(load_image(p))
    assert out[2, 2].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_16bit_grayscale_png_scaled_not_clipped(tmp_path):
    p = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 65535, 32896, 257, 1000]], np.uint16)).save(p)
    assert Image.open(p).mode.startswith("I;16")
    out = _rgb(load_image(p))[0, :, 0]
    assert out.tolist() == [0, 255, 128, 1, 4]  # 1000/257 = 3.89; clipping would give 255


def test_16bit_grayscale_png_raw_writer_and_unscaled_12bit_sbit(tmp_path):
    full = _raw_png(tmp_path / "full.png", np.array([[0, 65535, 32896]], np.uint16), color_type=0)
    assert _rgb(load_image(full))[0, :, 0].tolist() == [0, 255, 128]
    # 12-bit samples stored unscaled in a 16-bit PNG, declared by sBIT = 12.
    twelve = _raw_png(tmp_path / "12bit.png", np.array([[0, 4095, 2048]], np.uint16), color_type=0, sbit=b"\x0c")
    assert _rgb(load_image(twelve))[0, :, 0].tolist() == [0, 255, 128]
    # sBIT = 12 but samples use the full range (what the PNG spec asks for): plain /257.
    scaled = _raw_png(tmp_path / "12bit_scaled.png", np.array([[0, 65535, 32896]], np.uint16), color_type=0, sbit=b"\x0c")
    assert _rgb(load_image(scaled))[0, :, 0].tolist() == [0, 255, 128]
    # A very dark but properly scaled 12-bit image (12-bit 0..255 by left-bit replication): every
    # sample is < 4096, yet it must not be brightened 16 times.
    v = np.array([0, 100, 255], np.uint16)
    dark = _raw_png(tmp_path / "12bit_dark.png", ((v << 4) | (v >> 8))[None, :], color_type=0, sbit=b"\x0c")
    assert _rgb(load_image(dark))[0, :, 0].tolist() == [0, 6, 16]


def test_16bit_rgb_png(tmp_path):
    # Pillow opens 16-bit RGB PNGs as 8-bit "RGB" itself (keeping the high byte); check that what
    # comes out is the 8-bit image and not clipped or wrapped.
    arr = np.array([[[65535, 0, 32896], [257, 514, 771]], [[40000, 20000, 10000], [0, 0, 0]]], np.uint16)
    p = _raw_png(tmp_path / "rgb16.png", arr, color_type=2)
    out = _rgb(load_image(p))
    assert out.shape == (2, 2, 3)
    assert np.all(np.abs(out - np.round(arr / 257.0)) <= 1)


def test_16bit_rgba_png(tmp_path):
    arr = np.array([[[65535, 0, 0, 65535], [0, 65535, 0, 0]]], np.uint16)
    p = _raw_png(tmp_path / "rgba16.png", arr, color_type=6)
    out = _rgb(load_image(p))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [0, 0, 0]


def test_to_rgb_high_bit_modes():
    big_endian = Image.frombytes("I;16B", (3, 1), np.array([0, 65535, 32896], ">u2").tobytes())
    assert _rgb(to_rgb(big_endian))[0, :, 0].tolist() == [0, 255, 128]
    int32 = Image.fromarray(np.array([[0, 65535, 32896]], np.int32), "I")
    assert _rgb(to_rgb(int32))[0, :, 0].tolist() == [0, 255, 128]
    flt = Image.fromarray(np.array([[0.0, 1.0, 0.5]], np.float32), "F")
    assert _rgb(to_rgb(flt))[0, :, 0].tolist() == [0, 255, 128]
    with pytest.raises(ImageError, match="expected a 16-bit range"):
        to_rgb(Image.fromarray(np.array([[0, 70000]], np.int32), "I"))


# ------------------------------------------------------------------------------------- EXIF

def test_exif_orientation_6_rotates(tmp_path):
    arr = np.full((20, 40, 3), 128, np.uint8)  # stored 40 wide x 20 high
    arr[:5, :5] = (255, 0, 0)  # red marker in the stored top-left corner
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display", what a phone held upright writes
    p = tmp_path / "phone.jpg"
    img.save(p, quality=95, exif=exif)
    assert Image.open(p).size == (40, 20)

    out = _rgb(load_image(p))
    assert out.shape == (40, 20, 3)  # displayed 20 wide x 40 high
    # Rotating 90 degrees clockwise moves the stored top-left corner to the top-right.
    top_right, top_left = out[:4, -4:].mean(axis=(0, 1)), out[:4, :4].mean(axis=(0, 1))
    assert top_right[0] > 200 and top_right[1] < 60
    assert abs(top_left[0] - 128) < 20
    assert image_size(p) == (20, 40)  # headers only, orientation applied


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_is_ignored_not_fatal(tmp_path):
    p = _jpeg(tmp_path / "x.jpg", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff garbage")
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (64, 48)


# ------------------------------------------------------------------------------- large images

@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory) -> Path:
    # A solid colour compresses to ~1.5 MB, so a 100-megapixel JPEG costs half a second to write.
    p = tmp_path_factory.mktemp("huge") / "huge.jpg"
    Image.new("RGB", (10_000, 10_000), (180, 90, 60)).save(p, quality=50)
    return p


def test_huge_jpeg_draft_decodes_small_and_fast(huge_jpeg):
    assert image_size(huge_jpeg) == (10_000, 10_000)
    t0 = time.perf_counter()
    img = load_image(huge_jpeg, decode_size=512)
    elapsed = time.perf_counter() - t0
    assert img.mode == "RGB"
    # libjpeg's 1/8 scale (1250 px), then a 2x box reduce: both sides still >= 512.
    assert img.size == (625, 625)
    assert np.all(np.abs(_rgb(img)[300, 300] - np.array([180, 90, 60])) <= 3)
    assert elapsed < 5.0  # a full decode is 300 MB and several times slower; drafting is ~30 ms
    # The limit applies to the pixels actually decoded: drafted, 1.6 Mpx passes a 50 Mpx limit.
    assert load_image(huge_jpeg, decode_size=512, max_pixels=50_000_000).size == (625, 625)
    assert load_image(huge_jpeg, draft_size=512).size == (625, 625)  # the old name still works


def test_huge_jpeg_over_max_pixels_refused_before_decoding(huge_jpeg):
    t0 = time.perf_counter()
    msg = _one_line_error(
        huge_jpeg, startswith="huge.jpg: 10000x10000 = 100,000,000 pixels exceeds the limit of 50,000,000",
        contains="(raise it with edgederm --max-pixels 100000000 or EDGEDERM_MAX_PIXELS=100000000)",
        max_pixels=50_000_000,
    )
    assert time.perf_counter() - t0 < 1.0  # refused from the header, nothing decoded


def test_pil_bomb_guard_is_restored_and_silenced(huge_jpeg, recwarn):
    before = Image.MAX_IMAGE_PIXELS
    # 100 Mpx is above PIL's own 89 Mpx warning threshold; our limit is what counts.
    load_image(huge_jpeg, decode_size=256)
    image_size(huge_jpeg)
    assert Image.MAX_IMAGE_PIXELS == before
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_max_pixels_on_small_image(tmp_path):
    p = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(p)
    msg = _one_line_error(p, startswith="small.png: 100x100", contains="limit of 9,999", max_pixels=9_999)
    assert msg.endswith("(raise it with edgederm --max-pixels 10000 or EDGEDERM_MAX_PIXELS=10000)")


# ---------------------------------------------------------------------------------------- npz

@pytest.mark.parametrize("compressed", [False, True])
def test_npz_refs(tmp_path, compressed):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 255, (5, 28, 28, 3), dtype=np.uint8)
    gray = rng.integers(0, 255, (3, 28, 30), dtype=np.uint8)
    labels = np.arange(5)
    p = tmp_path / "dermamnist.npz"
    (np.savez_compressed if compressed else np.savez)(p, train_images=rgb, test_images=gray, train_labels=labels)

    img = load_image(f"{p}::train_images[3]")
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgb[3])
    g = load_image(f"{p}::test_images[2]")
    assert g.mode == "RGB" and g.size == (30, 28)
    assert np.array_equal(np.asarray(g)[..., 1], gray[2])
    assert image_size(f"{p}::test_images[0]") == (30, 28)
    # Uncompressed members are memory-mapped, not read whole (MedMNIST-224 arrays are GBs).
    assert isinstance(_NPZ.get(_parse_ref(f"{p}::train_images[0]")), np.memmap) is not compressed

    with pytest.raises(ImageError, match=r"^dermamnist.npz::val_images\[0\]: no array 'val_images'.*train_images"):
        load_image(f"{p}::val_images[0]")
    with pytest.raises(ImageError, match=r"index 5 out of range: 'train_images' holds 5 images"):
        load_image(f"{p}::train_images[5]")
    with pytest.raises(ImageError, match=r"expected N x H x W"):
        load_image(f"{p}::train_labels[0]")
    with pytest.raises(ImageError, match=r"file not found"):
        load_image(f"{tmp_path / 'nope.npz'}::train_images[0]")


def test_npz_non_uint8_refused(tmp_path):
    p = tmp_path / "f.npz"
    np.savez(p, x=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ImageError, match="float32, expected uint8"):
        load_image(f"{p}::x[0]")


# ----------------------------------------------------------------------------------- iterating

def test_iter_images_skips_and_counts(tmp_path):
    good = _jpeg(tmp_path / "good.jpg")
    (tmp_path / "empty.jpg").touch()
    recs = [
        Record("a", str(good), "nv"),
        Record("b", str(tmp_path / "empty.jpg"), "nv"),
        Record("c", str(tmp_path / "gone.jpg"), "mel"),
        Record("d", str(good), "mel"),
    ]
    stream = iter_images(recs)
    got = [(r.image_id, img.size) for r, img in stream]
    assert got == [("a", (64, 48)), ("d", (64, 48))]
    assert [s.item for s in stream.skipped] == ["b", "c"]
    assert "empty file" in stream.skipped[0].reason
    assert stream.summary() == "skipped 2 unreadable images"

    clean = iter_images(recs[:1])
    assert len(list(clean)) == 1 and clean.summary() == ""

    with pytest.raises(ImageError, match="empty.jpg: empty file"):
        list(iter_images(recs, on_error="raise"))


# ---------------------------------------------------------------------------------- real data

def test_real_images_load_as_rgb(data_root):
    ham = real_data_set(data_root, "ham10000") / "HAM10000_images_part_1"
    isic = real_data_set(data_root, "isic2019") / "ISIC_2019_Training_Input"
    refs = sorted(ham.glob("*.jpg"))[:3] + sorted(isic.glob("ISIC_*.jpg"))[:2]
    refs += sorted(isic.glob("*_downsampled.jpg"))[:2]
    ph2 = data_root / "ph2" / "PH2 Dataset images"
    if ph2.is_dir():  # a lesion mask (greyscale PNG) goes through the same door
        refs += sorted(ph2.glob("*/*_lesion/*.png"))[:1]
    assert any("_downsampled" in r.name for r in refs)
    for ref in refs:
        img = load_image(ref)
        assert img.mode == "RGB", ref
        assert img.size == image_size(ref), ref
        assert min(img.size) > 0 and np.asarray(img).std() > 0, ref
        small = load_image(ref, decode_size=64)
        assert small.mode == "RGB" and min(small.size) >= 64
