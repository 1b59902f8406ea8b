"""check_leakage: lesions across splits, and near-duplicate images across splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import real_data_set
from edgederm.data.leakage import check_leakage, hamming_pairs
from edgederm.data.records import DatasetIndex, Record
from edgederm.data.splits import make_kfold, make_splits
from test_splits import ham_index, synthetic_index

HAM_IMAGES = "ham10000/HAM10000_images_part_1"
ISIC_IMAGES = "isic2019/ISIC_2019_Training_Input"


# ------------------------------------------------------------------------- lesions across splits

def test_split_from_make_splits_has_no_crossings():
    index = synthetic_index()
    report = check_leakage(index, make_splits(index, seed=3), near_duplicates=False)
    assert report.ok
    assert report.crossings == [] and report.n_images == len(index)
    assert report.format() == "0 lesions/patients cross splits; near-duplicate search not run (not requested)"


def test_leaky_assignment_is_reported_with_the_lesion_id():
    index = synthetic_index()
    a = make_splits(index, seed=3)
    by_lesion: dict[str, list[str]] = {}
    for r in index.records:
        if r.lesion_id:
            by_lesion.setdefault(r.lesion_id, []).append(r.image_id)
    lesion, images = next((k, v) for k, v in sorted(by_lesion.items()) if len(v) >= 2)
    leaky = dict(a)
    leaky[images[0]], leaky[images[1]] = "train", "test"

    report = check_leakage(index, leaky, near_duplicates=False)
    assert not report.ok
    assert [c.group for c in report.crossings] == [f"lesion:{lesion}"]
    crossing = report.crossings[0]
    assert images[0] in crossing.splits["train"] and images[1] in crossing.splits["test"]
    text = report.format()
    assert text.splitlines()[0].startswith("1 lesion/patient crosses splits")
    assert lesion in text and images[0] in text and images[1] in text


def test_kfold_assignment_checked_by_fold():
    index = synthetic_index()
    folds = make_kfold(index, k=4, seed=0, test=0.1)
    assert check_leakage(index, folds, near_duplicates=False).ok
    r = next(r for r in index.records if r.lesion_id and sum(x.lesion_id == r.lesion_id for x in index.records) > 1)
    folds[r.image_id] = (folds[r.image_id] + 1) % 4 if folds[r.image_id] != -1 else 0
    report = check_leakage(index, folds, near_duplicates=False)
    assert [c.group for c in report.crossings] == [f"lesion:{r.lesion_id}"]
    assert any(name.startswith("fold ") for name in report.crossings[0].splits)


def test_unassigned_images_are_counted():
    index = synthetic_index()
    a = make_splits(index, seed=1)
    del a[index.records[0].image_id]
    report = check_leakage(index, a, near_duplicates=False)
    assert report.ok and report.unassigned == 1 and "1 images of the data set have no split" in report.format()


# ------------------------------------------------------------------------------ hamming search

@pytest.mark.parametrize("nbytes", [5, 8, 32])  # 5: not whole 64-bit words -> byte table
def test_hamming_pairs_matches_brute_force(nbytes):
    rng = np.random.default_rng(nbytes)
    h = rng.integers(0, 256, (300, nbytes), dtype=np.uint8)
    h[10] = h[200]
    h[11] = h[250] ^ np.eye(1, nbytes, 0, dtype=np.uint8)[0] * 0b101  # 2 bits off
    bits = np.unpackbits(h, axis=1).astype(int)
    full = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    limit = nbytes * 8 // 2 - 12
    want = {(i, j, full[i, j]) for i in range(300) for j in range(i + 1, 300) if full[i, j] <= limit}
    for block in (1 << 10, 1 << 25):  # tiny blocks exercise the row blocking
        ii, jj, dd = hamming_pairs(h, limit, block_bytes=block)
        assert {(int(i), int(j), int(d)) for i, j, d in zip(ii, jj, dd)} == want
    ii, jj, dd = hamming_pairs(h, 2)
    assert {(int(i), int(j), int(d)) for i, j, d in zip(ii, jj, dd)} == {(10, 200, 0), (11, 250, 2)}


# --------------------------------------------------------------------------- near-duplicates

def _ham(data_root: Path, image_id: str) -> Path:
    return real_data_set(data_root, HAM_IMAGES) / f"{image_id}.jpg"


def test_near_duplicates_of_a_real_image_are_reported(data_root, tmp_path):
    src = _ham(data_root, "ISIC_0024327")
    other = _ham(data_root, "ISIC_0024332")
    img = Image.open(src)
    w, h = img.size
    a, b = tmp_path / "copy_small_q70.jpg", tmp_path / "copy_bright.png"
    img.resize((w // 2, h // 2), Image.LANCZOS).save(a, quality=70)
    ImageEnhance.Brightness(img).enhance(1.08).save(b)
    recs = [
        Record("upload_17", str(a), "nv"),
        Record("upload_93", str(b), "nv"),
        Record("other", str(other), "nv"),
    ]
    index = DatasetIndex("user", str(tmp_path), ["nv"], recs)
    report = check_leakage(index, {"upload_17": "train", "upload_93": "test", "other": "val"})
    assert report.near_duplicates_checked  # auto: no lesion ids here
    assert report.crossings == []
    assert [(d.image_a, d.image_b) for d in report.near_duplicates] == [("upload_17", "upload_93")]
    assert report.near_duplicates[0].distance <= 4
    assert not report.ok
    text = report.format()
    assert text.splitlines()[0] == (
        "0 groups cross splits; 1 near-duplicate pair across splits (hash phash-8 of the central 60%, distance ≤ 4)"
    )
    assert "upload_17 (train) ~ upload_93 (test)" in text

    # in the same split they do not leak
    same = check_leakage(index, {"upload_17": "train", "upload_93": "train", "other": "val"})
    assert same.ok and same.near_duplicates_checked


def test_different_real_lesions_are_not_near_duplicates(data_root):
    # Pairs of different lesions that an 8x8 phash of the full frame puts within 4 bits: small
    # nevi on plain skin (HAM10000) and the black circular field of view (BCN20000). Hashing the
    # central part keeps them apart.
    isic = real_data_set(data_root, ISIC_IMAGES)
    pairs = [
        (_ham(data_root, "ISIC_0024704"), _ham(data_root, "ISIC_0030061")),
        (_ham(data_root, "ISIC_0026771"), _ham(data_root, "ISIC_0029904")),
        (isic / "ISIC_0059753.jpg", isic / "ISIC_0069512.jpg"),
    ]
    recs, assignment = [], {}
    for k, (a, b) in enumerate(pairs):
        recs += [Record(a.stem, str(a), "nv"), Record(b.stem, str(b), "nv")]
        assignment[a.stem], assignment[b.stem] = "train", "test"
    index = DatasetIndex("user", "/", ["nv"], recs)
    report = check_leakage(index, assignment, near_duplicates=True)
    assert report.n_hashed == 6 and report.near_duplicates == [] and report.ok
    # the trap is real: on the full frame (at the time of writing) all three pairs are within 4 bits
    naive = check_leakage(index, assignment, near_duplicates=True, crop=1.0)
    assert len(naive.near_duplicates) >= 2
    assert naive.hash_method == "phash-8"


def test_auto_mode_hash_cache_and_unreadable(data_root, tmp_path):
    files = sorted(real_data_set(data_root, HAM_IMAGES).glob("*.jpg"))[:4]
    copies = []
    for f in files:
        copies.append(tmp_path / f.name)
        copies[-1].write_bytes(f.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(files[0].read_bytes()[:500])
    recs = [Record(p.stem, str(p), "nv", lesion_id=f"L{k}") for k, p in enumerate(copies)]
    index = DatasetIndex("t", str(tmp_path), ["nv"], recs)
    a = {r.image_id: s for r, s in zip(recs, ["train", "train", "val", "test"])}
    assert not check_leakage(index, a).near_duplicates_checked  # every record has a lesion id

    recs.append(Record("broken", str(tmp_path / "broken.jpg"), "nv"))
    index = DatasetIndex("t", str(tmp_path), ["nv"], recs)
    a["broken"] = "test"
    cache: dict = {}
    report = check_leakage(index, a, hash_cache=cache)  # one record without lesion id -> auto runs
    assert report.near_duplicates_checked and report.n_hashed == 4
    assert [s.item for s in report.skipped] == ["broken"] and "truncated" in report.skipped[0].reason
    assert "1 images could not be hashed" in report.format()
    assert len(cache) == 4

    for p in copies:  # the cache is used: nothing is decoded a second time
        p.unlink()
    again = check_leakage(index, a, hash_cache=cache)
    assert again.n_hashed == 4 and [s.item for s in again.skipped] == ["broken"]


# ----------------------------------------------------------------------------------- real data

def test_real_ham10000_split_has_no_leak(data_root):
    index = ham_index(data_root)
    report = check_leakage(index, make_splits(index, seed=42))
    assert report.crossings == [] and report.ok
    assert report.n_groups < report.n_images  # multi-image lesions exist and were kept together
    assert not report.near_duplicates_checked  # HAM10000 has a lesion id for every image
    assert report.format() == "0 lesions cross splits; near-duplicate search not run (every image has a lesion id)"
