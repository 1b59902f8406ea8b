"""Tests of the data-set readers (edgederm.data.readers).

Real-data tests read the shared copies of the official layouts and compare with the counts in
their README; error cases use tiny layouts built in tmp_path (real HAM images are symlinked there
where a reader needs image files).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import real_data_set
from edgederm.data.readers import (
    READERS,
    detect_formats,
    list_readers,
    read_dataset,
    read_onehot_csv,
    read_ph2_table,
    register_reader,
)
from edgederm.data.records import DatasetIndex
from edgederm.errors import DataError

HAM_COUNTS = {"MEL": 144, "NV": 626, "BCC": 55, "AKIEC": 30, "BKL": 92, "DF": 10, "VASC": 11}
I19_TRAIN = {"MEL": 609, "NV": 1158, "BCC": 422, "AK": 0, "BKL": 259, "DF": 17, "VASC": 22, "SCC": 80}
I19_TEST = {"MEL": 229, "NV": 160, "BCC": 103, "AK": 0, "BKL": 42, "DF": 5, "VASC": 6, "SCC": 15}


# --- helpers ------------------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_image(path: Path, size: tuple[int, int] = (12, 9), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 120, 90)).save(path, format=fmt)
    return path


def one_warning(caplog: pytest.LogCaptureFixture) -> str:
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("edgederm")]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    return warnings[0].getMessage()


@pytest.fixture(scope="module")
def ham_dir(data_root: Path) -> Path:
    return real_data_set(data_root, "ham10000")


@pytest.fixture(scope="module")
def ham_rows(ham_dir: Path) -> list[dict[str, str]]:
    with open(ham_dir / "HAM10000_metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- registry -----------------------------------------------------------------------------------


def test_all_formats_are_registered() -> None:
    listed = list_readers()
    names = [name for name, _ in listed]
    assert names == sorted(names)
    assert set(names) >= {
        "ham10000", "isic2018", "isic2019", "isic2020", "ph2", "imagefolder", "csv", "dermamnist"
    }
    for name, description in listed:
        assert description == READERS[name].description and description
        assert READERS[name].detect is not None
    assert READERS["isic2019"].options == ("split", "images")
    assert READERS["isic2020"].default_taxonomy == "binary"


def test_duplicate_reader_name_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_reader("ham10000")(lambda path, *, taxonomy, strict: None)  # type: ignore[arg-type,return-value]


def test_register_and_use_a_new_reader(tmp_path: Path) -> None:
    marker = tmp_path / "x.mydata"
    marker.write_text("hi")

    @register_reader("test-mydata", detect=lambda p: p.suffix == ".mydata", default_taxonomy="binary")
    def _read(path: Path, *, taxonomy, strict, flavour: str = "a") -> DatasetIndex:  # type: ignore[no-untyped-def]
        """A test reader."""
        return DatasetIndex(name=f"my-{flavour}", root=str(path), classes=list(taxonomy.classes),
                            records=[], taxonomy=taxonomy.name)

    try:
        assert READERS["test-mydata"].description == "A test reader."
        assert READERS["test-mydata"].options == ("flavour",)
        ix = read_dataset(marker, flavour="b")
        assert ix.name == "my-b" and ix.classes == ["benign", "malignant"]
        with pytest.raises(DataError, match="does not take option.*colour.*flavour"):
            read_dataset(marker, colour="red")
    finally:
        del READERS["test-mydata"]


def test_missing_path_unknown_format_and_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(DataError) as e:
        read_dataset(tmp_path, fmt="ham10001")
    assert "ham10000" in str(e.value) and "dermamnist" in str(e.value)
    write_csv(tmp_path / "m.csv", ["path", "label"], [])
    with pytest.raises(DataError, match="unknown taxonomy"):
        read_dataset(tmp_path / "m.csv", taxonomy="ham8")


def test_undetectable_format_names_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError) as e:
        read_dataset(tmp_path)
    msg = str(e.value)
    assert "cannot tell the format" in msg and "\n" not in msg
    for name in READERS:
        assert name in msg


@pytest.mark.realdata
def test_ambiguous_format_on_the_real_metadata_folder(data_root: Path) -> None:
    meta = real_data_set(data_root, "metadata")
    assert detect_formats(meta) == ["ham10000", "isic2018", "isic2019", "isic2020"]
    with pytest.raises(DataError) as e:
        read_dataset(meta)
    assert "several formats (ham10000, isic2018, isic2019, isic2020)" in str(e.value)


# --- HAM10000 -----------------------------------------------------------------------------------


@pytest.mark.realdata
def test_ham10000_real(ham_dir: Path) -> None:
    assert detect_formats(ham_dir) == ["ham10000"]
    ix = read_dataset(ham_dir)
    assert ix.name == "ham10000" and ix.taxonomy == "ham7"
    assert ix.classes == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert len(ix) == 968 and not ix.skipped
    assert ix.class_counts() == HAM_COUNTS
    assert len({r.lesion_id for r in ix}) == 927
    assert all(r.lesion_id.startswith("HAM_") for r in ix)
    r = next(r for r in ix if r.image_id == "ISIC_0027850")
    assert r.label == "BKL" and r.lesion_id == "HAM_0001466"
    assert r.meta == {"age": 75, "sex": "male", "site": "ear", "dx_type": "histo", "dataset": "vidir_modern"}
    assert os.path.isabs(r.ref) and Path(r.ref).is_file()
    assert Path(r.ref).parent.name == "HAM10000_images_part_1"


@pytest.mark.realdata
def test_ham10000_into_binary(ham_dir: Path) -> None:
    ix = read_dataset(ham_dir, taxonomy="binary")
    assert ix.class_counts() == {"benign": 626 + 92 + 10 + 11, "malignant": 144 + 55 + 30}


@pytest.mark.realdata
def test_ham10000_full_metadata_without_images(data_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv_path = real_data_set(data_root, "metadata") / "HAM10000_metadata.csv"
    caplog.set_level(logging.WARNING)
    ix = read_dataset(csv_path)
    assert len(ix) == 0
    assert len(ix.skipped) == 10015 and {s.reason for s in ix.skipped} == {"missing file"}
    msg = one_warning(caplog)
    assert "10015 of 10015" in msg and "no image folder found" in msg
    with pytest.raises(DataError, match="10015 of 10015 images .* are missing"):
        read_dataset(csv_path, strict=True)


@pytest.mark.realdata
def test_ham10000_flat_images_folder_and_missing_files(
    tmp_path: Path, ham_dir: Path, ham_rows: list[dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    rows = ham_rows[:3]
    write_csv(tmp_path / "HAM10000_metadata.csv", list(rows[0]), [list(r.values()) for r in rows])
    (tmp_path / "images").mkdir()
    for r in rows[:2]:  # the third image is missing
        os.symlink(ham_dir / "HAM10000_images_part_1" / f"{r['image_id']}.jpg",
                   tmp_path / "images" / f"{r['image_id']}.jpg")
    caplog.set_level(logging.WARNING)
    ix = read_dataset(tmp_path)
    assert [r.image_id for r in ix] == [r["image_id"] for r in rows[:2]]
    # a symlinked image keeps the path the user laid out
    assert ix.records[0].ref == str(tmp_path / "images" / f"{rows[0]['image_id']}.jpg")
    assert [(s.item, s.reason) for s in ix.skipped] == [(rows[2]["image_id"], "missing file")]
    assert "1 of 3" in one_warning(caplog)
    with pytest.raises(DataError) as e:
        read_dataset(tmp_path, strict=True)
    msg = str(e.value)
    assert "1 of 3 images" in msg and str(tmp_path / "images" / f"{rows[2]['image_id']}.jpg") in msg


def test_ham10000_missing_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "HAM10000_metadata.csv", ["lesion_id", "image_id", "age"], [["L", "I", "3"]])
    with pytest.raises(DataError) as e:
        read_dataset(tmp_path)
    msg = str(e.value)
    assert "lacks column(s) dx" in msg and str(path) in msg and "\n" not in msg


def test_ham10000_unknown_dx_is_an_error(tmp_path: Path) -> None:
    write_csv(tmp_path / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx"], [["L", "I", "scc"]])
    with pytest.raises(DataError, match="unknown label 'scc' for ham10000_dx"):
        read_dataset(tmp_path)


def test_duplicate_image_rows_are_an_error(tmp_path: Path) -> None:
    write_csv(tmp_path / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx"],
              [["L1", "I1", "nv"], ["L1", "I1", "mel"]])
    with pytest.raises(DataError, match="'I1' is listed twice"):
        read_dataset(tmp_path)


# --- ISIC 2018 Task 3 ---------------------------------------------------------------------------


@pytest.mark.realdata
def test_isic2018_validation_ground_truth_parsing(data_root: Path) -> None:
    gt = real_data_set(data_root, "metadata") / "ISIC2018_Task3_Validation_GroundTruth.csv"
    pairs = read_onehot_csv(gt, ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"])
    assert len(pairs) == 193 and len({i for i, _ in pairs}) == 193
    assert Counter(c for _, c in pairs) == {
        "NV": 123, "BKL": 22, "MEL": 21, "BCC": 15, "AKIEC": 8, "VASC": 3, "DF": 1
    }
    assert pairs[0] == ("ISIC_0034321", "NV")
    # no images next to it: everything is listed as missing, under the validation split's name
    assert detect_formats(gt) == ["isic2018"]
    ix = read_dataset(gt)
    assert ix.name == "isic2018-validation" and len(ix) == 0 and len(ix.skipped) == 193


def _isic2018_layout(root: Path, ham_dir: Path, ham_rows: list[dict[str, str]], n: int = 6) -> list[dict[str, str]]:
    """A Task 3 training layout with n real HAM images, one per distinct dx where possible."""
    by_dx: dict[str, dict[str, str]] = {}
    for r in ham_rows:
        by_dx.setdefault(r["dx"], r)
    rows = list(by_dx.values())[:n]
    cols = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    write_csv(
        root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv",
        ["image", *cols],
        [[r["image_id"], *("1.0" if c == r["dx"].upper() else "0.0" for c in cols)] for r in rows],
    )
    inp = root / "ISIC2018_Task3_Training_Input"
    inp.mkdir()
    for r in rows:
        os.symlink(ham_dir / "HAM10000_images_part_1" / f"{r['image_id']}.jpg", inp / f"{r['image_id']}.jpg")
    return rows


@pytest.mark.realdata
def test_isic2018_round_trip(tmp_path: Path, ham_dir: Path, ham_rows: list[dict[str, str]]) -> None:
    rows = _isic2018_layout(tmp_path, ham_dir, ham_rows)
    # a folder of folders, but the specific reader wins over the generic imagefolder
    assert detect_formats(tmp_path) == ["isic2018"]
    ix = read_dataset(tmp_path)
    assert ix.name == "isic2018-training" and ix.taxonomy == "ham7"
    assert {r.image_id: r.label for r in ix} == {r["image_id"]: r["dx"].upper() for r in rows}
    assert all(Path(r.ref).is_file() for r in ix) and not ix.skipped
    assert all(r.lesion_id is None for r in ix)
    # the lesion groupings file, when present, gives lesion ids
    write_csv(tmp_path / "ISIC2018_Task3_Training_LesionGroupings.csv",
              ["image", "lesion_id", "diagnosis_confirm_type"],
              [[r["image_id"], r["lesion_id"], r["dx_type"]] for r in rows])
    ix = read_dataset(tmp_path, split="train")
    assert {r.image_id: r.lesion_id for r in ix} == {r["image_id"]: r["lesion_id"] for r in rows}


@pytest.mark.realdata
def test_isic2018_images_option_and_several_splits(
    tmp_path: Path, ham_dir: Path, ham_rows: list[dict[str, str]]
) -> None:
    rows = _isic2018_layout(tmp_path, ham_dir, ham_rows, n=2)
    other = tmp_path / "my_images"
    (tmp_path / "ISIC2018_Task3_Training_Input").rename(other)
    assert len(read_dataset(tmp_path).skipped) == 2
    assert len(read_dataset(tmp_path, images=other)) == 2
    write_csv(tmp_path / "ISIC2018_Task3_Validation_GroundTruth.csv",
              ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"],
              [[rows[0]["image_id"], 1, 0, 0, 0, 0, 0, 0]])
    with pytest.raises(DataError, match="several ground truths .* pass split="):
        read_dataset(tmp_path)
    assert read_dataset(tmp_path, split="val", images=other).class_counts()["MEL"] == 1
    with pytest.raises(DataError, match="unknown split 'dev'"):
        read_dataset(tmp_path, split="dev")


def test_onehot_rows_must_have_exactly_one_label(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv",
                  ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"],
                  [["ISIC_1", 1, 0, 0, 0, 0, 0, 0], ["ISIC_2", 1, 1, 0, 0, 0, 0, 0]])
    with pytest.raises(DataError, match=r"line 3 \(ISIC_2\): expected exactly one 1 .* found 2"):
        read_dataset(p)


# --- ISIC 2019 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def isic2019_dir(data_root: Path) -> Path:
    return real_data_set(data_root, "isic2019")


@pytest.fixture(scope="module")
def isic2019_train(isic2019_dir: Path) -> DatasetIndex:
    return read_dataset(isic2019_dir)


@pytest.mark.realdata
def test_isic2019_training_real(isic2019_dir: Path, isic2019_train: DatasetIndex) -> None:
    ix = isic2019_train
    assert detect_formats(isic2019_dir) == ["isic2019"]
    assert ix.name == "isic2019-train" and ix.taxonomy == "isic2019_8"
    assert ix.classes == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert len(ix) == 2567 and not ix.skipped
    assert ix.class_counts() == I19_TRAIN
    with_lesion = [r for r in ix if r.lesion_id]
    assert len(with_lesion) == 2366
    assert Counter(r.lesion_id[:3] for r in with_lesion) == {"BCN": 1314, "HAM": 968, "MSK": 84}
    r = next(r for r in ix if r.image_id == "ISIC_0000014")
    assert r.label == "NV" and r.meta == {"age": 35, "sex": "male", "site": "posterior torso"}
    assert all(Path(r.ref).is_file() for r in ix)


@pytest.mark.realdata
def test_isic2019_downsampled_quirk(isic2019_train: DatasetIndex) -> None:
    down = [r for r in isic2019_train if r.meta.get("downsampled")]
    assert len(down) == 202
    r = next(r for r in isic2019_train if r.image_id == "ISIC_0000045")
    assert r.meta["downsampled"] is True and Path(r.ref).name == "ISIC_0000045_downsampled.jpg"
    # ids are the archive ids: no suffix anywhere, and the metadata still joined
    assert not any(r.image_id.endswith("_downsampled") for r in isic2019_train)
    assert r.meta["site"] == "lower extremity" and r.meta["age"] == 30


@pytest.mark.realdata
def test_isic2019_into_ham7_and_binary(isic2019_dir: Path, ham_dir: Path) -> None:
    ix = read_dataset(isic2019_dir, taxonomy="ham7")
    assert ix.class_counts() == {"MEL": 609, "NV": 1158, "BCC": 422, "AKIEC": 80, "BKL": 259, "DF": 17, "VASC": 22}
    # the HAM10000 images inside ISIC 2019 get their HAM label back (their akiec is SCC there)
    ham = {r.image_id: r.label for r in read_dataset(ham_dir)}
    shared = [r for r in ix if r.image_id in ham]
    assert len(shared) == 968
    assert all(ham[r.image_id] == r.label for r in shared)
    b = read_dataset(isic2019_dir, taxonomy="binary")
    assert b.class_counts() == {"malignant": 609 + 422 + 80, "benign": 1158 + 259 + 17 + 22}


@pytest.mark.realdata
def test_isic2019_test_subset(isic2019_dir: Path) -> None:
    ix = read_dataset(isic2019_dir, split="test")
    assert ix.name == "isic2019-test" and len(ix) == 560
    assert ix.class_counts() == I19_TEST
    assert Counter(s.reason for s in ix.skipped) == {"UNK has no ISIC2019_8 class": 33}
    assert all(r.lesion_id for r in ix)
    full = read_dataset(isic2019_dir, split="test", taxonomy="isic2019_9")
    assert len(full) == 593 and full.class_counts()["UNK"] == 33 and not full.skipped
    assert len({r.lesion_id for r in full}) == 457
    ham = read_dataset(isic2019_dir, split="test", taxonomy="ham7")
    assert len(ham) == 560 and Counter(s.reason for s in ham.skipped) == {"UNK has no HAM7 class": 33}


def _isic2019_layout(root: Path, ham_dir: Path, ham_rows: list[dict[str, str]]) -> list[str]:
    ids = [r["image_id"] for r in ham_rows[:3]]
    inp = root / "ISIC_2019_Training_Input"
    inp.mkdir(parents=True)
    # CSV and file names disagree on the suffix in both directions
    names = [f"{ids[0]}_downsampled", ids[1], ids[2]]
    files = [ids[0], f"{ids[1]}_downsampled", ids[2]]
    for i, f in zip(ids, files):
        os.symlink(ham_dir / "HAM10000_images_part_1" / f"{i}.jpg", inp / f"{f}.jpg")
    cols = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ["image", *cols],
              [[n, *(1.0 if c == lab else 0.0 for c in cols)] for n, lab in zip(names, ["MEL", "UNK", "AK"])])
    return ids


@pytest.mark.realdata
def test_isic2019_suffix_mismatch_no_metadata(
    tmp_path: Path, ham_dir: Path, ham_rows: list[dict[str, str]]
) -> None:
    ids = _isic2019_layout(tmp_path, ham_dir, ham_rows)
    ix = read_dataset(tmp_path)  # no metadata CSV: still readable
    assert [(r.image_id, r.label) for r in ix] == [(ids[0], "MEL"), (ids[2], "AK")]
    assert ix.records[0].meta == {"downsampled": True}
    assert [(s.item, s.reason) for s in ix.skipped] == [(ids[1], "UNK has no ISIC2019_8 class")]
    ix9 = read_dataset(tmp_path, taxonomy="isic2019_9")
    assert Path(ix9.records[1].ref).name == f"{ids[1]}_downsampled.jpg"
    assert read_dataset(tmp_path, taxonomy="ham7").records[1].label == "AKIEC"


@pytest.mark.realdata
def test_isic2019_official_onehot_test_ground_truth(
    tmp_path: Path, ham_dir: Path, ham_rows: list[dict[str, str]]
) -> None:
    ids = [r["image_id"] for r in ham_rows[:2]]
    inp = tmp_path / "ISIC_2019_Test_Input"
    inp.mkdir()
    for i in ids:
        os.symlink(ham_dir / "HAM10000_images_part_1" / f"{i}.jpg", inp / f"{i}.jpg")
    cols = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    write_csv(tmp_path / "ISIC_2019_Test_GroundTruth.csv", ["image", *cols, "score_weight"],
              [[ids[0], 0, 0, 0, 0, 0, 0, 0, 1, 0, 1.0], [ids[1], 0, 1, 0, 0, 0, 0, 0, 0, 0, 1.0]])
    write_csv(tmp_path / "ISIC_2019_Test_Metadata.csv", ["image", "age_approx", "anatom_site_general", "sex"],
              [[ids[0], 40, "head/neck", "female"], [ids[1], "", "", ""]])
    ix = read_dataset(tmp_path)  # no training ground truth: the test set is read
    assert ix.name == "isic2019-test"
    assert [(r.image_id, r.label) for r in ix] == [(ids[0], "SCC"), (ids[1], "NV")]
    assert ix.records[0].meta == {"age": 40, "site": "head/neck", "sex": "female"}
    assert ix.records[1].meta == {}
    with pytest.raises(DataError, match="has no ISIC_2019_Training_GroundTruth.csv"):
        read_dataset(tmp_path, split="train")


# --- ISIC 2020 ----------------------------------------------------------------------------------


@pytest.mark.realdata
def test_isic2020_real(data_root: Path) -> None:
    d = real_data_set(data_root, "isic2020")
    assert detect_formats(d) == ["isic2020"]
    ix = read_dataset(d)
    assert ix.taxonomy == "binary" and ix.classes == ["benign", "malignant"]
    assert len(ix) == 2701 and ix.class_counts() == {"benign": 2662, "malignant": 39}
    assert all(r.patient_id and r.patient_id.startswith("IP_") for r in ix)
    assert len({r.patient_id for r in ix}) == 130
    assert all(r.lesion_id is None for r in ix)  # this release has no lesion_id column
    assert all(r.group.startswith("patient:") for r in ix)
    r = next(r for r in ix if r.image_id == "ISIC_0125706")
    assert r.meta["diagnosis"] == "unknown" and r.meta["site"] == "torso" and r.meta["age"] == 60
    assert Path(r.ref).parent.name == "train" and Path(r.ref).is_file()


@pytest.mark.realdata
def test_isic2020_into_ham7_uses_the_diagnosis(data_root: Path) -> None:
    ix = read_dataset(real_data_set(data_root, "isic2020"), taxonomy="ham7")
    assert len(ix) == 78
    assert ix.class_counts() == {"MEL": 39, "NV": 35, "BCC": 0, "AKIEC": 0, "BKL": 4, "DF": 0, "VASC": 0}
    assert Counter(s.reason for s in ix.skipped) == {"unknown has no HAM7 class": 2623}


@pytest.mark.realdata
def test_isic2020_v2_with_lesion_ids(tmp_path: Path, ham_dir: Path, ham_rows: list[dict[str, str]]) -> None:
    ids = [r["image_id"] for r in ham_rows[:2]]
    (tmp_path / "train").mkdir()
    for i in ids:
        os.symlink(ham_dir / "HAM10000_images_part_1" / f"{i}.jpg", tmp_path / "train" / f"{i}.jpg")
    write_csv(tmp_path / "ISIC_2020_Training_GroundTruth_v2.csv",
              ["image_name", "patient_id", "lesion_id", "diagnosis", "target"],
              [[ids[0], "IP_1", "IL_1", "melanoma", 1], [ids[1], "IP_1", "IL_2", "nevus", 0]])
    ix = read_dataset(tmp_path)
    assert [(r.label, r.lesion_id, r.patient_id) for r in ix] == [
        ("malignant", "IL_1", "IP_1"), ("benign", "IL_2", "IP_1")
    ]
    assert ix.records[0].group == "lesion:IL_1"


# --- PH2 ----------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_ph2_real(data_root: Path) -> None:
    d = real_data_set(data_root, "ph2")
    assert detect_formats(d) == ["ph2"]
    ix = read_dataset(d)
    assert ix.taxonomy == "ph2_3" and len(ix) == 200 and not ix.skipped
    assert ix.class_counts() == {"common_nevus": 80, "atypical_nevus": 80, "melanoma": 40}
    assert sum(1 for r in ix if r.mask_ref and Path(r.mask_ref).is_file()) == 200
    r = next(r for r in ix if r.image_id == "IMD003")
    assert r.label == "common_nevus" and r.meta == {"asymmetry": "0"}
    assert Path(r.ref).name == "IMD003.jpg" and Path(r.mask_ref).name == "IMD003_lesion.png"
    # the images folder itself is accepted too
    assert len(read_dataset(d / "PH2 Dataset images")) == 200


@pytest.mark.realdata
def test_ph2_into_ham7_and_binary(data_root: Path) -> None:
    d = real_data_set(data_root, "ph2")
    assert read_dataset(d, taxonomy="ham7").class_counts() == {
        "MEL": 40, "NV": 160, "BCC": 0, "AKIEC": 0, "BKL": 0, "DF": 0, "VASC": 0
    }
    assert read_dataset(d, taxonomy="binary").class_counts() == {"benign": 160, "malignant": 40}


# The layout of the original release: '||'-separated table, criteria '|'-separated, .bmp files.
PH2_ORIGINAL_TXT = """\
||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network | Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil ||       Colors       ||
||  IMD003  ||                        ||          0         ||     0     |       T         |      A        |    A    |        A         |         A         ||       4  5         ||
||  IMD009  ||                        ||          1         ||     1     |       AT        |      AT       |    A    |        A         |         A         ||       3  4         ||
||  IMD058  ||        Melanoma        ||          2         ||     2     |       AT        |      P        |    P    |        P         |         P         ||       3  4  5  6   ||

Legends for the Clinical Diagnosis:
0 - Common Nevus
1 - Atypical Nevus
2 - Melanoma
"""


def _ph2_layout(root: Path, ext: str = "bmp") -> None:
    (root / "PH2_dataset.txt").write_text(PH2_ORIGINAL_TXT.replace("\n", "\r\n"))
    fmt = {"bmp": "BMP", "jpg": "JPEG", "png": "PNG"}[ext]
    for case in ("IMD003", "IMD009", "IMD058"):
        base = root / "PH2 Dataset images" / case
        make_image(base / f"{case}_Dermoscopic_Image" / f"{case}.{ext}", fmt=fmt)
        if case != "IMD009":  # a case without its mask
            make_image(base / f"{case}_lesion" / f"{case}_lesion.{ext}", fmt=fmt)
        (base / f"{case}_roi").mkdir()


def test_ph2_original_bmp_layout(tmp_path: Path) -> None:
    _ph2_layout(tmp_path)
    make_image(tmp_path / "PH2 Dataset images" / "IMD999" / "IMD999_Dermoscopic_Image" / "IMD999.bmp", fmt="BMP")
    table = read_ph2_table(tmp_path / "PH2_dataset.txt")
    assert list(table) == ["IMD003", "IMD009", "IMD058"]
    assert table["IMD058"]["histological_diagnosis"] == "Melanoma"
    assert table["IMD009"]["pigment_network"] == "AT" and table["IMD009"]["colors"] == "3  4"
    assert detect_formats(tmp_path) == ["ph2"]
    ix = read_dataset(tmp_path)
    assert [(r.image_id, r.label) for r in ix] == [
        ("IMD003", "common_nevus"), ("IMD009", "atypical_nevus"), ("IMD058", "melanoma")
    ]
    assert all(r.ref.endswith(".bmp") for r in ix)
    assert [r.mask_ref is not None for r in ix] == [True, False, True]
    assert ix.records[2].meta["histological_diagnosis"] == "Melanoma"
    assert [(s.item, s.reason) for s in ix.skipped] == [("IMD999", "no label in PH2_dataset.txt")]


def test_ph2_png_images_and_missing_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _ph2_layout(tmp_path, ext="png")
    (tmp_path / "PH2 Dataset images" / "IMD058" / "IMD058_Dermoscopic_Image" / "IMD058.png").unlink()
    caplog.set_level(logging.WARNING)
    ix = read_dataset(tmp_path)
    assert [r.image_id for r in ix] == ["IMD003", "IMD009"] and ix.records[0].ref.endswith(".png")
    assert "1 of 3" in one_warning(caplog)
    with pytest.raises(DataError, match=r"1 of 3 .*IMD058\.bmp"):
        read_dataset(tmp_path, strict=True)


def test_ph2_without_table(tmp_path: Path) -> None:
    (tmp_path / "PH2 Dataset images").mkdir()
    (tmp_path / "PH2_dataset.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match="no PH2_dataset.txt .*xlsx is not supported"):
        read_dataset(tmp_path)
    (tmp_path / "PH2_dataset.txt").write_text("Name\tAsymmetry\r\nIMD003\t0\r\n")
    with pytest.raises(DataError, match="Clinical Diagnosis"):
        read_dataset(tmp_path)


# --- image folders ------------------------------------------------------------------------------


def test_imagefolder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for cls, n in (("nv", 3), ("mel", 2), ("bcc", 1)):
        for i in range(n):
            make_image(tmp_path / cls / f"{cls}{i}.png", fmt="PNG")
    make_image(tmp_path / "mel" / "nested" / "deep.jpg")
    (tmp_path / "nv" / "notes.md").write_text("not an image")
    assert detect_formats(tmp_path) == ["imagefolder"]
    ix = read_dataset(tmp_path)
    assert ix.classes == ["bcc", "mel", "nv"] and ix.taxonomy == ""
    assert ix.class_counts() == {"bcc": 1, "mel": 3, "nv": 3}
    assert {r.image_id for r in ix} >= {"deep", "mel0", "nv2"}
    ham = read_dataset(tmp_path, taxonomy="ham7")
    assert ham.classes == list(("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"))
    assert ham.class_counts()["MEL"] == 3 and ham.taxonomy == "ham7"
    given = read_dataset(tmp_path, classes="nv,mel,bcc,scc")
    assert given.classes == ["nv", "mel", "bcc", "scc"] and given.class_counts()["scc"] == 0
    with pytest.raises(DataError, match=r"label\(s\) not in the class list \('nv'\)"):
        read_dataset(tmp_path, classes=["mel", "bcc"])
    make_image(tmp_path / "scar" / "s.png", fmt="PNG")
    with pytest.raises(DataError, match="'scar'.*classes: MEL, NV"):
        read_dataset(tmp_path, taxonomy="ham7")


def test_imagefolder_duplicate_stems_use_relative_paths(tmp_path: Path) -> None:
    make_image(tmp_path / "a" / "x.jpg")
    make_image(tmp_path / "b" / "x.jpg")
    ix = read_dataset(tmp_path, fmt="imagefolder")
    assert sorted(r.image_id for r in ix) == ["a/x", "b/x"]


def test_label_file_beside_folders_is_not_an_imagefolder(tmp_path: Path) -> None:
    make_image(tmp_path / "a" / "x.jpg")
    (tmp_path / "labels.csv").write_text("id,y\n")
    assert "imagefolder" not in detect_formats(tmp_path)


# --- CSV manifests ------------------------------------------------------------------------------


def test_csv_manifest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = make_image(tmp_path / "imgs" / "a.jpg")
    elsewhere = make_image(tmp_path / "other" / "b.png", fmt="PNG")
    m = write_csv(
        tmp_path / "sub" / "manifest.csv",
        ["path", "label", "lesion_id", "patient_id", "site"],
        [["../imgs/a.jpg", "mel", "L1", "P1", "back"], [str(elsewhere), "nv", "", "P1", ""],
         ["../imgs/missing.jpg", "nv", "L3", "", "arm"]],
    )
    assert detect_formats(m) == ["csv"]
    caplog.set_level(logging.WARNING)
    ix = read_dataset(m)
    assert ix.classes == ["mel", "nv"] and [r.image_id for r in ix] == ["a", "b"]
    assert ix.records[0].ref == str(a)  # relative to the CSV's folder, made absolute
    assert (ix.records[0].lesion_id, ix.records[0].patient_id, ix.records[0].meta) == ("L1", "P1", {"site": "back"})
    assert (ix.records[1].lesion_id, ix.records[1].patient_id) == (None, "P1")
    assert [(s.item, s.reason) for s in ix.skipped] == [("missing", "missing file")]
    assert "1 of 3" in one_warning(caplog)
    with pytest.raises(DataError, match="missing.jpg"):
        read_dataset(m, strict=True)
    ham = read_dataset(m, taxonomy="ham7")
    assert [r.label for r in ham] == ["MEL", "NV"]
    assert read_dataset(m, classes=["nv", "mel", "bcc"]).classes == ["nv", "mel", "bcc"]


def test_csv_manifest_unknown_labels_are_listed(tmp_path: Path) -> None:
    m = write_csv(tmp_path / "m.csv", ["path", "label"],
                  [["a.jpg", "mel"], ["b.jpg", "scar"], ["c.jpg", "tattoo"], ["d.jpg", "scar"]])
    with pytest.raises(DataError) as e:
        read_dataset(m, classes="mel,nv")
    msg = str(e.value)
    assert "2 label(s) not in the class list ('scar', 'tattoo')" in msg and "classes: mel, nv" in msg
    with pytest.raises(DataError, match="'scar', 'tattoo'"):
        read_dataset(m, taxonomy="ham7")


def test_csv_manifest_missing_columns_and_empty_cells(tmp_path: Path) -> None:
    m = write_csv(tmp_path / "m.csv", ["file", "label"], [["a.jpg", "mel"]])
    with pytest.raises(DataError, match=r"lacks column\(s\) path"):
        read_dataset(m, fmt="csv")
    m = write_csv(tmp_path / "m.csv", ["path", "label"], [["a.jpg", ""]])
    with pytest.raises(DataError, match="line 2: empty path or label"):
        read_dataset(m)


# --- DermaMNIST ---------------------------------------------------------------------------------


def _dermamnist(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, labels in (("train", [0, 1, 2, 3, 4, 5, 6, 4]), ("val", [5, 5]), ("test", [4, 0, 6])):
        arrays[f"{split}_images"] = rng.integers(0, 255, (len(labels), 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8).reshape(-1, 1)
    np.savez_compressed(path, **arrays)
    return path


def test_dermamnist(tmp_path: Path) -> None:
    npz = _dermamnist(tmp_path / "dermamnist.npz")
    assert detect_formats(npz) == ["dermamnist"]
    ix = read_dataset(npz)
    assert ix.name == "dermamnist-train" and ix.taxonomy == "ham7" and len(ix) == 8
    assert [r.label for r in ix] == ["AKIEC", "BCC", "BKL", "DF", "MEL", "NV", "VASC", "MEL"]
    assert ix.records[7].ref == f"{npz}::train_images[7]" and ix.records[7].image_id == "train_7"
    test = read_dataset(npz, split="test", taxonomy="binary")
    assert [r.label for r in test] == ["malignant", "malignant", "benign"]
    every = read_dataset(npz, split="all")
    assert len(every) == 13 and Counter(r.meta["split"] for r in every) == {"train": 8, "val": 2, "test": 3}
    assert len({r.image_id for r in every}) == 13


def test_dermamnist_errors(tmp_path: Path) -> None:
    npz = tmp_path / "dermamnist_64.npz"
    np.savez(npz, train_images=np.zeros((2, 4, 4, 3), np.uint8), train_labels=np.array([[1], [9]]))
    with pytest.raises(DataError, match=r"outside 0\.\.6: \[9\]"):
        read_dataset(npz)
    with pytest.raises(DataError, match="lacks array.*val_images, val_labels"):
        read_dataset(npz, split="val")
    with pytest.raises(DataError, match="unknown split"):
        read_dataset(npz, split="validation")
    np.savez(npz, train_images=np.zeros((3, 4, 4, 3), np.uint8), train_labels=np.array([[1], [2]]))
    with pytest.raises(DataError, match="2 labels for 3 images"):
        read_dataset(npz)
    bad = tmp_path / "dermamnist_bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        read_dataset(bad)
