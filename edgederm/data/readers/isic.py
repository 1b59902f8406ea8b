"""The ISIC challenge layouts: 2018 Task 3, 2019 (training and test), 2020."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from edgederm.data.records import DatasetIndex
from edgederm.data.taxonomy import Taxonomy, normalize_label
from edgederm.errors import DataError

from .common import (
    _Builder,
    _clean,
    _clean_unknown,
    _csv_header,
    _FileIndex,
    _find_child,
    _image_folders,
    _meta,
    _number,
    _read_csv,
    read_onehot_csv,
    _split_name,
    _user_folder,
)
from .registry import register_reader

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# ISIC 2018 Task 3
# ---------------------------------------------------------------------------------------------

_ISIC2018_GT = re.compile(r"^ISIC2018_Task3_(\w+?)_GroundTruth\.csv$", re.IGNORECASE)
_ISIC2018_SPLITS = {
    "train": "Training", "training": "Training",
    "val": "Validation", "validation": "Validation",
    "test": "Test",
}
_HAM7_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def _isic2018_gt_files(p: Path) -> list[Path]:
    if p.is_file():
        return [p]
    found = []
    for e in sorted(os.scandir(p), key=lambda e: e.name):
        if e.is_file() and _ISIC2018_GT.match(e.name):
            found.append(Path(e.path))
        elif e.is_dir() and "groundtruth" in e.name.casefold():
            found += [Path(x.path) for x in sorted(os.scandir(e.path), key=lambda x: x.name)
                      if x.is_file() and _ISIC2018_GT.match(x.name)]
    return found


def _detect_isic2018(p: Path) -> bool:
    if p.is_file():
        if _ISIC2018_GT.match(p.name):
            return True
        return p.suffix.lower() == ".csv" and _csv_header(p) == ["image", *_HAM7_COLUMNS]
    return bool(_isic2018_gt_files(p))


@register_reader(
    "isic2018",
    detect=_detect_isic2018,
    description="ISIC 2018 Task 3: ISIC2018_Task3_<Split>_GroundTruth.csv + _Input/",
    default_taxonomy="ham7",
)
def read_isic2018(
    path: Path,
    *,
    taxonomy: Taxonomy,
    strict: bool,
    split: str | None = None,
    images: str | os.PathLike[str] | None = None,
) -> DatasetIndex:
    want = _split_name(split, _ISIC2018_SPLITS, "isic2018")
    candidates = _isic2018_gt_files(path)
    if want is not None and not path.is_file():
        candidates = [c for c in candidates if (m := _ISIC2018_GT.match(c.name)) and
                      m.group(1).casefold() == want.casefold()]
    if not candidates:
        for_split = f" for split {split}" if split else ""
        raise DataError(f"no ISIC2018_Task3_*_GroundTruth.csv{for_split} in {path}")
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise DataError(
            f"{path} has several ground truths ({names}); pass split=train, validation or test"
        )
    gt = candidates[0]
    m = _ISIC2018_GT.match(gt.name)
    split_label = m.group(1) if m else want  # "Training", "Validation", "Test" or None
    # the official zips unpack to ISIC2018_Task3_<Split>_GroundTruth/<csv>, next to the inputs
    bases = [gt.parent, gt.parent.parent]
    folders = _user_folder(images)
    if not folders and split_label:
        for base in bases:
            folders += _image_folders(base, [f"ISIC2018_Task3_{split_label}_Input"])
    elif not folders:
        # a renamed CSV: use the only ISIC2018_Task3_*_Input folder around, if there is one
        inputs = [Path(e.path) for base in bases if base.is_dir() for e in os.scandir(base)
                  if e.is_dir() and re.match(r"ISIC2018_Task3_\w+_Input$", e.name)]
        if len(inputs) == 1:
            folders = inputs
    # lesion ids were published later, in ISIC2018_Task3_<Split>_LesionGroupings.csv
    groupings: dict[str, str] = {}
    if split_label:
        for base in bases:
            lg_name = f"ISIC2018_Task3_{split_label}_LesionGroupings.csv"
            lg = _find_child(base, [lg_name], want_dir=False)
            if lg is not None:
                _, rows = _read_csv(lg, ["image", "lesion_id"])
                groupings = {
                    r["image"].strip(): r["lesion_id"].strip()
                    for r in rows
                    if _clean(r["lesion_id"])
                }
                break
    files = _FileIndex(folders)
    name = f"isic2018-{split_label.lower()}" if split_label else "isic2018"
    b = _Builder(name, gt.parent, taxonomy.classes, taxonomy=taxonomy, strict=strict, source=gt)
    b.searched = files.folders
    for image, col in read_onehot_csv(gt, _HAM7_COLUMNS):
        label, reason = b.target(normalize_label(col, "isic2018_onehot"), "ham7", col)
        b.add(image, label, skip_reason=reason, file=files.find(image),
              expected=files.expected(image), lesion_id=groupings.get(image))
    return b.build()


# ---------------------------------------------------------------------------------------------
# ISIC 2019
# ---------------------------------------------------------------------------------------------

_I19_TRAIN_GT = "ISIC_2019_Training_GroundTruth.csv"
_I19_TRAIN_META = "ISIC_2019_Training_Metadata.csv"
_I19_TEST_SUBSET = "ISIC_2019_Test_subset_labels.csv"
_I19_TEST_GT = "ISIC_2019_Test_GroundTruth.csv"
_I19_TEST_META = "ISIC_2019_Test_Metadata.csv"
_I19_COLUMNS = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
_DOWNSAMPLED = "_downsampled"
_I19_FILES = (_I19_TRAIN_GT, _I19_TEST_SUBSET, _I19_TEST_GT)


def _detect_isic2019(p: Path) -> bool:
    if p.is_file():
        return p.name.casefold() in {n.casefold() for n in _I19_FILES}
    return _find_child(p, _I19_FILES, want_dir=False) is not None


def _isic_id(raw: str) -> tuple[str, bool]:
    """The archive id of an ISIC 2019 image name, and whether it carried ``_downsampled``."""
    if raw.endswith(_DOWNSAMPLED):
        return raw[: -len(_DOWNSAMPLED)], True
    return raw, False


@register_reader(
    "isic2019",
    detect=_detect_isic2019,
    description="ISIC 2019: ISIC_2019_Training_GroundTruth.csv + _Metadata.csv + _Input/ "
    "(split=test: the test set)",
    default_taxonomy="isic2019_8",
)
def read_isic2019(
    path: Path,
    *,
    taxonomy: Taxonomy,
    strict: bool,
    split: str | None = None,
    images: str | os.PathLike[str] | None = None,
) -> DatasetIndex:
    base = path.parent if path.is_file() else path
    want = _split_name(split, {"train": "train", "training": "train", "test": "test"}, "isic2019")
    if want is None:
        if path.is_file():
            want = "train" if path.name.casefold() == _I19_TRAIN_GT.casefold() else "test"
        else:
            want = "train" if _find_child(base, [_I19_TRAIN_GT], want_dir=False) else "test"

    # pairs: (image name as listed, ISIC 2019 class code)
    if want == "train":
        gt = _find_child(base, [_I19_TRAIN_GT], want_dir=False)
        if gt is None:
            raise DataError(f"{base} has no {_I19_TRAIN_GT}")
        meta_csv = _find_child(base, [_I19_TRAIN_META], want_dir=False)
        dirs = ["ISIC_2019_Training_Input"]
        pairs = read_onehot_csv(gt, _I19_COLUMNS)
    else:
        gt = _find_child(base, [_I19_TEST_SUBSET], want_dir=False)
        if gt is not None:
            # the subset file carries its metadata in the same rows, with a dx column
            _, rows = _read_csv(gt, ["image", "dx"])
            meta_csv = gt
            dirs = ["ISIC_2019_Test_Input_subset", "ISIC_2019_Test_Input"]
            pairs = [(r["image"].strip(), r["dx"].strip()) for r in rows]
        else:
            gt = _find_child(base, [_I19_TEST_GT], want_dir=False)
            if gt is None:
                raise DataError(f"{base} has no {_I19_TEST_SUBSET} or {_I19_TEST_GT}")
            meta_csv = _find_child(base, [_I19_TEST_META], want_dir=False)
            dirs = ["ISIC_2019_Test_Input"]
            pairs = read_onehot_csv(gt, _I19_COLUMNS)
    metadata: dict[str, dict[str, str]] = {}
    if meta_csv is not None:
        _, mrows = _read_csv(meta_csv, ["image"])
        metadata = {_isic_id(r["image"].strip())[0]: r for r in mrows}
    else:
        log.info("isic2019: no metadata CSV next to %s (no lesion ids, age, site, sex)", gt)

    files = _FileIndex(_user_folder(images) + _image_folders(base, dirs))
    b = _Builder(
        f"isic2019-{want}", base, taxonomy.classes, taxonomy=taxonomy, strict=strict, source=gt
    )
    b.searched = files.folders
    for raw_id, value in pairs:
        image_id, downsampled = _isic_id(raw_id)
        label, reason = b.target(normalize_label(value, "isic2019_onehot"), "isic2019_9", value)
        m = metadata.get(image_id, {})
        b.add(
            image_id,
            label,
            skip_reason=reason,
            # the file may or may not carry the suffix, whatever the CSV says
            file=files.find(raw_id, image_id + _DOWNSAMPLED, image_id),
            expected=files.expected(raw_id),
            lesion_id=_clean(m.get("lesion_id")),
            meta=_meta(
                age=_number(m.get("age_approx")),
                sex=_clean_unknown(m.get("sex")),
                site=_clean_unknown(m.get("anatom_site_general")),
                downsampled=True if downsampled else None,
            ),
        )
    return b.build()


# ---------------------------------------------------------------------------------------------
# ISIC 2020
# ---------------------------------------------------------------------------------------------

_I20_GT = ("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv")
_I20_IMAGE_DIRS = ("train", "ISIC_2020_Training_JPEG", "ISIC_2020_Train_Input", "jpeg")


def _detect_isic2020(p: Path) -> bool:
    if p.is_file():
        return p.name.casefold() in {n.casefold() for n in _I20_GT}
    return _find_child(p, _I20_GT, want_dir=False) is not None


@register_reader(
    "isic2020",
    detect=_detect_isic2020,
    description="ISIC 2020: ISIC_2020_Training_GroundTruth.csv + train/ (binary target)",
    default_taxonomy="binary",
)
def read_isic2020(
    path: Path,
    *,
    taxonomy: Taxonomy,
    strict: bool,
    images: str | os.PathLike[str] | None = None,
) -> DatasetIndex:
    gt = path if path.is_file() else _find_child(path, _I20_GT, want_dir=False)
    if gt is None:
        raise DataError(f"{path} has no {_I20_GT[1]}")
    base = gt.parent
    binary = taxonomy.name == "binary"
    # binary labels come from target; finer taxonomies need the diagnosis column
    _, rows = _read_csv(gt, ["image_name", "target" if binary else "diagnosis"])
    folders = _user_folder(images)
    if not folders:
        for d in _image_folders(base, _I20_IMAGE_DIRS):
            folders.append(d)
            train = _find_child(d, ["train"], want_dir=True)  # jpeg/train, ..._JPEG/train
            if train is not None:
                folders.append(train)
    files = _FileIndex(folders)
    b = _Builder("isic2020", base, taxonomy.classes, taxonomy=taxonomy, strict=strict, source=gt)
    b.searched = files.folders
    for row in rows:
        image_id = _clean(row["image_name"])
        if image_id is None:
            raise DataError(f"{gt}: a row has an empty image_name")
        if binary:
            t = row["target"]
            label, reason = b.target(normalize_label(t, "isic2020_target"), "binary", t)
        else:
            dx = row["diagnosis"]
            label, reason = b.target(normalize_label(dx, "isic2020_diagnosis"), "ham7", dx)
        b.add(
            image_id,
            label,
            skip_reason=reason,
            file=files.find(image_id),
            expected=files.expected(image_id),
            lesion_id=_clean(row.get("lesion_id")),
            patient_id=_clean(row.get("patient_id")),
            meta=_meta(
                age=_number(row.get("age_approx")),
                sex=_clean_unknown(row.get("sex")),
                site=_clean_unknown(row.get("anatom_site_general_challenge")),
                diagnosis=_clean(row.get("diagnosis")),
                benign_malignant=_clean(row.get("benign_malignant")),
            ),
        )
    return b.build()
