"""Tests of data-set inspection (edgederm.data.inspect) on the real ISIC 2019 and HAM10000 copies
and on small synthetic indexes."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import real_data_set
from edgederm.data.images import image_size
from edgederm.data.inspect import format_inspection, inspect_dataset
from edgederm.data.readers import read_dataset
from edgederm.data.records import DatasetIndex, Record, Skipped


@pytest.mark.realdata
def test_inspect_isic2019_real(data_root: Path) -> None:
    ix = read_dataset(real_data_set(data_root, "isic2019"))
    res = inspect_dataset(ix)
    json.dumps(res)  # plain data, for --json output
    assert res["name"] == "isic2019-train" and res["taxonomy"] == "isic2019_8"
    assert res["images"] == 2567
    assert res["class_counts"]["NV"] == 1158 and res["class_counts"]["MEL"] == 609
    assert res["empty_classes"] == ["AK"]
    assert res["malignant"] == 609 + 422 + 80
    assert res["imbalance_ratio"] == round(1158 / 17, 2)
    les = res["lesions"]
    assert les["count"] == 2046 and les["images_with_id"] == 2366
    assert les["images_per_group_max"] == 8
    assert les["images_per_group_mean"] == pytest.approx(2366 / 2046, abs=1e-3)
    assert res["patients"] is None and res["masks"] == 0
    sizes = res["image_sizes"]
    assert sizes["read"] == 2567 and sizes["unreadable"] == 0
    # the shared copies have their short side at 256 px
    assert min(sizes["width"]["min"], sizes["height"]["min"]) == 256
    assert sizes["width"]["max"] == 387 and sizes["height"]["max"] == 306
    assert res["skipped"] == {"count": 0, "by_reason": {}}

    text = format_inspection(res)
    assert "isic2019-train" in text and "2046" in text
    assert "NV" in text and "1158" in text and "45.1%" in text
    assert "no images for: AK" in text


@pytest.mark.realdata
def test_inspect_isic2019_test_groups_skipped_reasons(data_root: Path) -> None:
    ix = read_dataset(real_data_set(data_root, "isic2019"), split="test", taxonomy="ham7")
    res = inspect_dataset(ix, max_images=0)
    assert res["skipped"] == {"count": 33, "by_reason": {"UNK has no HAM7 class": 33}}
    assert res["image_sizes"]["read"] == 0 and res["image_sizes"]["width"] is None
    text = format_inspection(res)
    assert "33  UNK has no HAM7 class" in text and "image size: none read" in text


@pytest.mark.realdata
def test_inspect_ham10000_real_with_sample(data_root: Path) -> None:
    ix = read_dataset(real_data_set(data_root, "ham10000"))
    res = inspect_dataset(ix, max_images=50)
    assert res["images"] == 968 and res["lesions"]["count"] == 927
    assert res["lesions"]["images_per_group_max"] == 3
    with open(real_data_set(data_root, "ham10000") / "HAM10000_metadata.csv", newline="") as f:
        per_lesion = Counter(row["lesion_id"] for row in csv.DictReader(f))
    assert res["lesions"]["groups_with_several_images"] == sum(1 for n in per_lesion.values() if n > 1)
    assert res["image_sizes"]["sampled"] == 50 and res["image_sizes"]["read"] == 50
    # HAM10000 images are all 600x450, re-encoded here with the short side at 256
    assert res["image_sizes"]["width"] == {"min": 341, "median": 341, "max": 341}
    assert res["image_sizes"]["height"] == {"min": 256, "median": 256, "max": 256}
    assert res["malignant"] == 144 + 55 + 30
    text = format_inspection(res)
    assert "927" in text and "50 of 50 sampled read" in text


def test_image_size_reads_only_the_header(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (17, 31, 3), dtype=np.uint8)
    Image.fromarray(noise).save(p, quality=95)
    assert image_size(p) == (31, 17)
    # a truncated file still has its header: the size is known without decoding the pixels
    data = p.read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "t.jpg") == (31, 17)
    with pytest.raises(OSError):
        with Image.open(tmp_path / "t.jpg") as im:
            im.load()  # decoding it would fail


def _index(records: list[Record], classes: list[str], skipped: list[Skipped] | None = None) -> DatasetIndex:
    return DatasetIndex(name="t", root="/", classes=classes, records=records, skipped=skipped or [])


def test_inspect_npz_refs_patients_and_unreadable(tmp_path: Path) -> None:
    npz = tmp_path / "d.npz"
    np.savez(npz, train_images=np.zeros((3, 28, 30, 3), np.uint8), train_labels=np.zeros((3, 1)))
    good = tmp_path / "g.jpg"
    Image.new("RGB", (40, 20)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    records = [
        Record("n0", f"{npz}::train_images[0]", "a", patient_id="P1"),
        Record("n2", f"{npz}::train_images[2]", "a", patient_id="P1"),
        Record("n9", f"{npz}::train_images[9]", "b", patient_id="P2"),  # out of range
        Record("g", str(good), "b", mask_ref=str(good)),
        Record("bad", str(bad), "b"),
        Record("gone", str(tmp_path / "gone.jpg"), "b"),
    ]
    skipped = [Skipped("x", "missing file"), Skipped("y", "missing file"), Skipped("z", "UNK has no HAM7 class")]
    res = inspect_dataset(_index(records, ["a", "b", "c"], skipped))
    assert res["class_counts"] == {"a": 2, "b": 4, "c": 0} and res["imbalance_ratio"] == 2.0
    assert "malignant" not in res  # no registered taxonomy
    assert res["lesions"] is None
    assert res["patients"] == {
        "count": 2, "images_with_id": 3, "images_per_group_mean": 1.5,
        "images_per_group_max": 2, "groups_with_several_images": 1,
    }
    assert res["masks"] == 1
    sizes = res["image_sizes"]
    assert sizes["read"] == 3 and sizes["unreadable"] == 3
    assert sizes["unreadable_examples"] == ["n9", "bad", "gone"]
    assert sizes["width"] == {"min": 30, "median": 30, "max": 40}
    assert sizes["height"] == {"min": 20, "median": 28, "max": 28}
    assert res["skipped"] == {"count": 3, "by_reason": {"missing file": 2, "UNK has no HAM7 class": 1}}
    text = format_inspection(res)
    assert "unreadable images: 3 (e.g. n9, bad, gone)" in text
    assert "patients  2" in text and "lesions   none recorded" in text
    assert text.index("missing file") < text.index("UNK has no HAM7 class")


def test_inspect_empty_index() -> None:
    res = inspect_dataset(_index([], ["a", "b"]))
    assert res["images"] == 0 and res["imbalance_ratio"] is None and res["empty_classes"] == ["a", "b"]
    assert "images    0" in format_inspection(res)


def test_sample_is_spread_over_the_index(tmp_path: Path) -> None:
    paths = []
    for i in range(10):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (10 + i, 5)).save(p)
        paths.append(p)
    ix = _index([Record(str(i), str(p), "a") for i, p in enumerate(paths)], ["a"])
    res = inspect_dataset(ix, max_images=2)
    assert res["image_sizes"]["width"] == {"min": 10, "median": 12.5, "max": 15}
