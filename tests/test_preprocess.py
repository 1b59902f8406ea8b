"""The preprocessing spec: golden vectors on real images, and agreement with torchvision."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgederm.data.images import load_image
from edgederm.fsutil import sha256_file
from edgederm.preprocess import PreprocessSpec

GOLDEN = Path(__file__).parent / "golden" / "preprocess.json"
sys.path.insert(0, str(GOLDEN.parent))
from make_golden import SPECS, sample, synthetic_image  # noqa: E402

# float32 arithmetic on the same Pillow resize: agreement far below one grey level (1/255/std ≈ 0.017).
TOL = 1e-4


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


def _check(entry: dict, img: Image.Image) -> None:
    assert list(img.size) == entry["size"]
    for key, spec in SPECS.items():
        want = entry["outputs"][key]
        got = sample(spec.apply(img), spec.layout)
        assert got["shape"] == want["shape"], key
        np.testing.assert_allclose(got["values"], want["values"], atol=TOL, err_msg=f"{entry['image']} {key}")
        np.testing.assert_allclose(got["channel_mean"], want["channel_mean"], atol=TOL)
        np.testing.assert_allclose(got["channel_std"], want["channel_std"], atol=TOL)


def test_golden_specs_match_the_code() -> None:
    assert {k: s.to_dict() for k, s in SPECS.items()} == _golden()["specs"]


def test_golden_synthetic_image() -> None:
    entry = next(e for e in _golden()["images"] if e["image"] == "synthetic")
    _check(entry, Image.fromarray(synthetic_image()))


def test_golden_real_images(data_root: Path) -> None:
    for entry in _golden()["images"]:
        if entry["sha256"] is None:
            continue
        path = data_root / entry["image"]
        if not path.exists():
            pytest.skip(f"{path} absent")
        assert sha256_file(path) == entry["sha256"], f"{path} changed; the golden vector no longer applies"
        _check(entry, load_image(path))


def test_golden_detects_a_change() -> None:
    """The check is not vacuous: BGR instead of RGB, or bicubic for bilinear, breaks it."""
    entry = next(e for e in _golden()["images"] if e["image"] == "synthetic")
    img = Image.fromarray(synthetic_image())
    for wrong in (SPECS["shorter224"].with_(channel_order="BGR"), SPECS["shorter224"].with_(interpolation="bicubic")):
        got = sample(wrong.apply(img), wrong.layout)
        assert not np.allclose(got["values"], entry["outputs"]["shorter224"]["values"], atol=TOL)


def test_matches_torchvision_eval_transform() -> None:
    """shorter-side resize 256 + centre crop 224 + normalise == torchvision's classic eval pipeline."""
    from torchvision import transforms as T

    img = Image.fromarray(synthetic_image())
    tv = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ours = PreprocessSpec(input_size=(224, 224)).apply(img)
    np.testing.assert_allclose(ours, tv(img).numpy(), atol=1e-5)


@pytest.mark.parametrize("size", [(450, 600), (600, 450), (97, 301), (224, 224)])
def test_geometry_shapes(size: tuple[int, int]) -> None:
    img = Image.new("RGB", (size[1], size[0]), (10, 20, 30))
    for resize in ("shorter", "stretch", "pad"):
        spec = PreprocessSpec(input_size=(96, 128), resize=resize)  # type: ignore[arg-type]
        assert spec.geometric(img).size == (128, 96)
        assert spec.apply(img).shape == (3, 96, 128)


def test_layout_dtype_and_quantisation() -> None:
    img = Image.fromarray(synthetic_image())
    base = PreprocessSpec(input_size=(32, 32))
    nchw = base.apply(img)
    nhwc = base.with_(layout="NHWC").apply(img)
    np.testing.assert_array_equal(np.moveaxis(nchw, 0, -1), nhwc)
    bgr = base.with_(channel_order="BGR").apply(img)
    np.testing.assert_array_equal(bgr[::-1], nchw)
    q = base.with_(dtype="int8", input_scale=0.02, input_zero_point=3).apply(img)
    assert q.dtype == np.int8
    np.testing.assert_allclose((q.astype(np.float32) - 3) * 0.02, nchw, atol=0.01 + 1e-6)
    with pytest.raises(ValueError, match="input_scale"):
        base.with_(dtype="uint8").apply(img)


def test_roundtrip_and_version_guard() -> None:
    spec = PreprocessSpec(input_size=(300, 300), interpolation="bicubic", layout="NHWC")
    again = PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.digest() == spec.digest()
    with pytest.raises(ValueError, match="newer"):
        PreprocessSpec.from_dict({**spec.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="unknown"):
        PreprocessSpec.from_dict({**spec.to_dict(), "colour": "red"})
