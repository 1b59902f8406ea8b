"""Lesion-grouped splits: nothing of a lesion crosses splits; split files refuse other data."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from conftest import real_data_set
from edgederm.data.records import DatasetIndex, Record
from edgederm.data.splits import (
    TEST_FOLD,
    _ensure_class_presence,
    apply_split,
    kfold_to_split,
    make_kfold,
    make_splits,
    read_split_csv,
    read_split_meta,
    split_fractions,
    write_split_csv,
)
from edgederm.errors import DataError

CLASSES = ["nv", "mel", "bcc", "df", "vasc"]


def synthetic_index(seed: int = 0, n_lesions: int = 200) -> DatasetIndex:
    """Multi-image lesions (1-4 images each), a rare class with exactly 3 lesions, and some
    records grouped by patient only or by nothing (their own image)."""
    rng = np.random.default_rng(seed)
    records: list[Record] = []
    labels = rng.choice(["nv", "mel", "bcc", "df"], size=n_lesions, p=[0.6, 0.25, 0.11, 0.04]).astype(object)
    labels[:3] = "vasc"  # exactly 3 groups: possible to have it in train, val and test
    for k, label in enumerate(labels):
        for j in range(int(rng.integers(1, 5))):
            records.append(Record(f"img_{k:04d}_{j}", f"/none/img_{k:04d}_{j}.jpg", str(label), lesion_id=f"L{k:04d}"))
    for p in range(20):  # patients without lesion ids, two images each
        for j in range(2):
            records.append(Record(f"pat_{p:02d}_{j}", f"/none/pat_{p:02d}_{j}.jpg", "nv", patient_id=f"P{p:02d}"))
    for s in range(15):  # singletons
        records.append(Record(f"solo_{s:02d}", f"/none/solo_{s:02d}.jpg", "mel"))
    order = rng.permutation(len(records))
    return DatasetIndex("synthetic", "/none", list(CLASSES), [records[i] for i in order])


@pytest.fixture(scope="module")
def index() -> DatasetIndex:
    return synthetic_index()


def groups_crossing(index: DatasetIndex, assignment: dict) -> list[str]:
    where: dict[str, set] = defaultdict(set)
    for r in index.records:
        where[r.group].add(assignment[r.image_id])
    return [g for g, s in where.items() if len(s) > 1]


# ----------------------------------------------------------------------------------- make_splits

def test_no_group_in_two_splits(index):
    a = make_splits(index, val=0.15, test=0.15, seed=42)
    assert set(a) == {r.image_id for r in index.records}
    assert set(a.values()) == {"train", "val", "test"}
    assert groups_crossing(index, a) == []
    # the patient-only records moved together too
    pats = defaultdict(set)
    for r in index.records:
        if r.patient_id:
            pats[r.patient_id].add(a[r.image_id])
    assert all(len(s) == 1 for s in pats.values())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 42])
def test_every_class_in_every_split_when_possible(index, seed):
    a = make_splits(index, seed=seed)
    present = defaultdict(set)
    for r in index.records:
        present[a[r.image_id]].add(r.label)
    for split in ("train", "val", "test"):
        assert present[split] == set(CLASSES), (split, present[split])


def test_fractions_near_requested(index):
    a = make_splits(index, val=0.15, test=0.15)
    fr = split_fractions(index, a)
    assert abs(fr["all"]["test"] - 0.15) < 0.03
    assert abs(fr["all"]["val"] - 0.15) < 0.03
    assert abs(fr["all"]["train"] - 0.70) < 0.04
    # stratified: the big classes follow the overall fractions
    for c in ("nv", "mel"):
        assert abs(fr[c]["test"] - fr["all"]["test"]) < 0.05, (c, fr[c])

    b = make_splits(index, val=0.1, test=0.2)
    fb = split_fractions(index, b)["all"]
    assert abs(fb["test"] - 0.2) < 0.03 and abs(fb["val"] - 0.1) < 0.03


def test_zero_fraction_leaves_split_out(index):
    a = make_splits(index, val=0.0, test=0.2)
    assert set(a.values()) == {"train", "test"}
    assert groups_crossing(index, a) == []


def test_deterministic_by_seed(index):
    assert make_splits(index, seed=7) == make_splits(index, seed=7)
    # the order of the records does not matter (a reader may list files in any order)
    shuffled = DatasetIndex(index.name, index.root, index.classes, list(reversed(index.records)))
    assert make_splits(shuffled, seed=7) == make_splits(index, seed=7)
    assert make_kfold(shuffled, seed=7, test=0.1) == make_kfold(index, seed=7, test=0.1)
    a, b = make_splits(index, seed=7), make_splits(index, seed=8)
    changed = sum(a[i] != b[i] for i in a)
    assert changed > len(a) * 0.1


def test_bad_requests(index):
    with pytest.raises(DataError, match="fractions"):
        make_splits(index, val=0.5, test=0.5)
    with pytest.raises(DataError, match="fractions"):
        make_splits(index, val=-0.1)
    empty = DatasetIndex("e", "/none", ["nv"], [])
    with pytest.raises(DataError, match="no images"):
        make_splits(empty)
    one = DatasetIndex("one", "/none", ["nv"], [Record(f"i{k}", "x", "nv", lesion_id="L1") for k in range(5)])
    with pytest.raises(DataError, match="1 lesion/patient group"):
        make_splits(one)
    dup = DatasetIndex("dup", "/none", ["nv"], [Record("a", "x", "nv"), Record("a", "y", "nv"), Record("b", "z", "nv")])
    with pytest.raises(DataError, match="more than once"):
        make_splits(dup)


def test_class_presence_repair_moves_whole_groups():
    # class "df" has 3 groups, all carved into train: the repair must give val and test one each,
    # moving whole groups, and must not strip another class from the donor.
    labels = np.array(["df", "df", "df", "df", "df", "nv", "nv", "nv", "nv"], dtype=object)
    groups = np.array(["g1", "g1", "g2", "g3", "g3", "g4", "g5", "g6", "g6"], dtype=object)
    split = np.array(["train"] * 5 + ["train", "val", "test", "test"], dtype=object)
    _ensure_class_presence(labels, groups, split, ["train", "val", "test"])
    per = defaultdict(set)
    for lab, g, s in zip(labels, groups, split):
        per[s].add(lab)
    assert all("df" in per[s] for s in ("train", "val", "test")), split
    assert all("nv" in per[s] for s in ("train", "val", "test")), split
    for g in set(groups):
        assert len(set(split[groups == g])) == 1
    # g2, the smallest df group, is the first to move
    assert split[groups == "g2"][0] != "train"

    # only 2 groups of a class: impossible for 3 splits, left alone
    split2 = np.array(["train"] * 5 + ["train", "val", "test", "test"], dtype=object)
    labels2 = labels.copy()
    groups2 = np.array(["g1", "g1", "g2", "g2", "g2", "g4", "g5", "g6", "g6"], dtype=object)
    _ensure_class_presence(labels2, groups2, split2, ["train", "val", "test"])
    assert list(split2[:5]) == ["train"] * 5


# ------------------------------------------------------------------------------------- k-fold

def test_kfold_covers_every_image_once_group_disjoint(index):
    folds = make_kfold(index, k=5, seed=3)
    assert set(folds) == {r.image_id for r in index.records}
    assert set(folds.values()) == set(range(5))
    assert groups_crossing(index, folds) == []
    sizes = Counter(folds.values())
    assert max(sizes.values()) - min(sizes.values()) < len(index) * 0.08
    assert folds == make_kfold(index, k=5, seed=3)


def test_kfold_with_held_out_test(index):
    folds = make_kfold(index, k=4, seed=1, test=0.15)
    assert set(folds.values()) == {TEST_FOLD, 0, 1, 2, 3}
    n_test = sum(v == TEST_FOLD for v in folds.values())
    assert abs(n_test / len(index) - 0.15) < 0.03
    assert groups_crossing(index, folds) == []
    for f in range(4):
        a = kfold_to_split(folds, f)
        assert groups_crossing(index, a) == []
        assert {i for i, s in a.items() if s == "test"} == {i for i, v in folds.items() if v == TEST_FOLD}
        assert {i for i, s in a.items() if s == "val"} == {i for i, v in folds.items() if v == f}
    with pytest.raises(DataError):
        kfold_to_split(folds, 9)
    with pytest.raises(DataError, match="lower k"):
        make_kfold(DatasetIndex("t", "/", ["nv"], [Record(f"i{k}", "x", "nv") for k in range(3)]), k=5)


# -------------------------------------------------------------------------------- split files

def test_split_csv_round_trip(index, tmp_path):
    a = make_splits(index, seed=5)
    path = write_split_csv(tmp_path / "runs" / "split.csv", index, a, seed=5, extra_meta={"val": 0.15, "test": 0.15})
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["split.csv"]  # no temp left
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# edgederm-split {")
    assert lines[1] == "image_id,label,group,split"
    meta = read_split_meta(path)
    assert meta["fingerprint"] == index.fingerprint() and meta["seed"] == 5 and meta["val"] == 0.15
    assert abs(sum(meta["fractions"].values()) - 1) < 1e-6
    rows = list(csv.DictReader(lines[1:]))
    assert len(rows) == len(index)
    first = index.records[0]
    assert rows[0] == {"image_id": first.image_id, "label": first.label, "group": first.group, "split": a[first.image_id]}

    assert read_split_csv(path, index) == a


def test_kfold_csv_round_trip(index, tmp_path):
    folds = make_kfold(index, k=3, seed=2, test=0.2)
    path = write_split_csv(tmp_path / "folds.csv", index, folds, seed=2)
    assert path.read_text().splitlines()[1] == "image_id,label,group,split,fold"
    meta = read_split_meta(path)
    assert meta["kind"] == "kfold" and meta["k"] == 3
    assert read_split_csv(path, index) == folds


def test_refuses_other_data(index, tmp_path):
    a = make_splits(index, seed=5)
    path = write_split_csv(tmp_path / "split.csv", index, a, seed=5)

    # same images, one label corrected: fingerprint differs
    recs = list(index.records)
    r0 = recs[0]
    recs[0] = Record(r0.image_id, r0.ref, "mel" if r0.label != "mel" else "nv", lesion_id=r0.lesion_id, patient_id=r0.patient_id)
    relabelled = DatasetIndex(index.name, index.root, index.classes, recs)
    with pytest.raises(DataError, match=r"split.csv was made for data fingerprint \w+, but this data set's is \w+") as info:
        read_split_csv(path, relabelled)
    assert "\n" not in str(info.value)
    # ...unless asked not to check it (ids still must match)
    assert read_split_csv(path, relabelled, check_fingerprint=False) == a

    # fewer images: the file lists ids the data does not have
    smaller = index.subset(range(len(index) - 3))
    with pytest.raises(DataError, match="lists 3 image ids not in the data set"):
        read_split_csv(path, smaller)

    # more images: rows missing (with fingerprint off), fingerprint mismatch (with it on)
    bigger = DatasetIndex(index.name, index.root, index.classes, list(index.records) + [Record("new", "x", "nv")])
    with pytest.raises(DataError, match="fingerprint"):
        read_split_csv(path, bigger)
    with pytest.raises(DataError, match="no row for 1 images"):
        read_split_csv(path, bigger, check_fingerprint=False)


def test_refuses_foreign_or_broken_files(index, tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("image_id,split\nimg_0000_0,train\n")
    with pytest.raises(DataError, match="not an edgederm split file"):
        read_split_csv(plain, index)
    with pytest.raises(DataError, match="not found"):
        read_split_csv(tmp_path / "missing.csv", index)

    a = make_splits(index, seed=5)
    path = write_split_csv(tmp_path / "split.csv", index, a, seed=5)
    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines[:2] + [lines[2].rsplit(",", 1)[0] + ",holdout"] + lines[3:]) + "\n")
    with pytest.raises(DataError, match=r"bad.csv:3: split 'holdout'"):
        read_split_csv(bad, index)
    twice = tmp_path / "twice.csv"
    twice.write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(DataError, match="listed twice"):
        read_split_csv(twice, index)
    newer = tmp_path / "newer.csv"
    meta = json.loads(lines[0][len("# edgederm-split "):])
    meta["version"] = 99
    newer.write_text("# edgederm-split " + json.dumps(meta) + "\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match="newer"):
        read_split_csv(newer, index)


def test_write_is_atomic_on_failure(index, tmp_path):
    a = make_splits(index, seed=5)
    path = write_split_csv(tmp_path / "split.csv", index, a, seed=5)
    before = path.read_bytes()
    with pytest.raises(DataError):
        write_split_csv(path, index, {**a, "ghost": "train"}, seed=5)
    with pytest.raises(ValueError, match="override"):
        write_split_csv(path, index, a, seed=6, extra_meta={"fingerprint": "x"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["split.csv"]


# ---------------------------------------------------------------------------------- apply_split

def test_apply_split(index):
    a = make_splits(index, seed=11)
    parts = apply_split(index, a)
    assert list(parts) == ["train", "val", "test"]
    assert sum(len(p) for p in parts.values()) == len(index)
    for name, part in parts.items():
        assert part.classes == index.classes
        assert all(a[r.image_id] == name for r in part.records)
    only_train = apply_split(index, dict.fromkeys(a, "train"))
    assert len(only_train["val"]) == 0 and len(only_train["train"]) == len(index)

    with pytest.raises(DataError, match="have no split"):
        apply_split(index, dict(list(a.items())[:-1]))
    with pytest.raises(DataError, match="not in the data set"):
        apply_split(index, {**a, "ghost": "test"})
    with pytest.raises(DataError, match="kfold_to_split"):
        apply_split(index, make_kfold(index, k=3))


# ----------------------------------------------------------------------------------- real data

def ham_index(data_root: Path) -> DatasetIndex:
    """HAM10000 subset as Records, read with the csv module (independent of the readers)."""
    ham = real_data_set(data_root, "ham10000")
    images = ham / "HAM10000_images_part_1"
    with open(ham / "HAM10000_metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    records = [
        Record(r["image_id"], str(images / f"{r['image_id']}.jpg"), r["dx"], lesion_id=r["lesion_id"] or None)
        for r in rows
    ]
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    return DatasetIndex("ham10000", str(ham), classes, records)


def test_real_ham10000_no_lesion_crosses_splits(data_root, tmp_path):
    index = ham_index(data_root)
    multi = [g for g, n in Counter(index.groups()).items() if n > 1]
    assert len(multi) > 20  # the subset really has multi-image lesions to keep together
    a = make_splits(index, seed=42)
    assert groups_crossing(index, a) == []
    for split in ("train", "val", "test"):
        assert {r.label for r in index.records if a[r.image_id] == split} == set(index.classes)
    path = write_split_csv(tmp_path / "ham_split.csv", index, a, seed=42)
    assert read_split_csv(path, index) == a
    folds = make_kfold(index, k=5, seed=42)
    assert groups_crossing(index, folds) == []


def _small_real_folder(data_root: Path, root: Path, per_class: int) -> Path:
    """An imagefolder of real HAM10000 JPEGs, ``per_class`` images (each its own lesion) per class."""
    import shutil

    ham = real_data_set(data_root, "ham10000")
    rows = list(csv.DictReader((ham / "HAM10000_metadata.csv").open()))
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if len(seen[r["dx"]]) < per_class and r["lesion_id"] not in seen[r["dx"]]:
            seen[r["dx"]].add(r["lesion_id"])
            (root / r["dx"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(ham / "HAM10000_images_part_1" / f"{r['image_id']}.jpg", root / r["dx"])
    return root


def test_tiny_real_folder_splits_with_fewer_folds_or_says_why(data_root: Path, tmp_path: Path, capsys, caplog) -> None:
    """6 images per class used to end in scikit-learn's "n_splits=7 cannot be greater than the
    number of members in each class" traceback; now it is split with 6 folds (and says so),
    and 3 per class is one line naming the counts and the minimum."""
    from helpers import run_cli

    six = _small_real_folder(data_root, tmp_path / "six", 6)
    with caplog.at_level("WARNING", logger="edgederm.data.splits"):
        code, out, err = run_cli(capsys, "data", "split", six, "--out", tmp_path / "six.csv")
    assert code == 0, err
    assert "15% test split: the largest class has only 6 images, too few for 7 stratified folds; carved 1 of 6" in caplog.text
    from edgederm.data.readers import read_dataset

    assignment = read_split_csv(tmp_path / "six.csv", read_dataset(six, "imagefolder"))
    per_split = Counter(assignment.values())
    assert per_split == {"train": 28, "val": 7, "test": 7}  # every class: 4 / 1 / 1
    labels = {p.stem: p.parent.name for p in six.rglob("*.jpg")}
    for s in ("train", "val", "test"):
        assert {labels[i] for i, sp in assignment.items() if sp == s} == set(labels.values()), s

    three = _small_real_folder(data_root, tmp_path / "three", 3)
    code, out, err = run_cli(capsys, "data", "split", three, "--out", tmp_path / "three.csv")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "15% test split (akiec 3 images/3 groups, bcc 3/3," in lines[0] and "needs at least 6 images (it has 3)" in lines[0]
    assert not (tmp_path / "three.csv").exists()
    code, out, err = run_cli(capsys, "data", "split", three, "--out", tmp_path / "three.csv", "--kfold", "5", "--test", "0")
    assert code == 2 and "for 5 stratified folds" in err and "lower k" in err and "Traceback" not in err
