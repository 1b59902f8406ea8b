"""HAM10000: ``HAM10000_metadata.csv`` + its image folders."""

from __future__ import annotations

import os
from pathlib import Path

from edgederm.data.records import DatasetIndex
from edgederm.data.taxonomy import Taxonomy, normalize_label
from edgederm.errors import DataError

from .common import (
    _Builder,
    _clean,
    _clean_unknown,
    _FileIndex,
    _find_child,
    _image_folders,
    _meta,
    _number,
    _read_csv,
    _user_folder,
)
from .registry import register_reader


# ---------------------------------------------------------------------------------------------
# HAM10000
# ---------------------------------------------------------------------------------------------

_HAM_CSV = "HAM10000_metadata.csv"
_HAM_IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images", "images")


def _detect_ham10000(p: Path) -> bool:
    if p.is_file():
        return p.name.casefold() == _HAM_CSV.casefold()
    return _find_child(p, [_HAM_CSV], want_dir=False) is not None


@register_reader(
    "ham10000",
    detect=_detect_ham10000,
    description="HAM10000: HAM10000_metadata.csv + HAM10000_images_part_1/_part_2/",
    default_taxonomy="ham7",
)
def read_ham10000(
    path: Path,
    *,
    taxonomy: Taxonomy,
    strict: bool,
    images: str | os.PathLike[str] | None = None,
) -> DatasetIndex:
    csv_path = path if path.is_file() else _find_child(path, [_HAM_CSV], want_dir=False)
    if csv_path is None:
        raise DataError(f"{path} has no {_HAM_CSV}")
    base = csv_path.parent
    _, rows = _read_csv(csv_path, ["lesion_id", "image_id", "dx"])
    files = _FileIndex(_user_folder(images) + _image_folders(base, _HAM_IMAGE_DIRS))
    b = _Builder(
        "ham10000", base, taxonomy.classes, taxonomy=taxonomy, strict=strict, source=csv_path
    )
    b.searched = files.folders
    for row in rows:
        image_id = _clean(row["image_id"])
        if image_id is None:
            raise DataError(f"{csv_path}: a row has an empty image_id")
        label, reason = b.target(normalize_label(row["dx"], "ham10000_dx"), "ham7", row["dx"])
        b.add(
            image_id,
            label,
            skip_reason=reason,
            file=files.find(image_id),
            expected=files.expected(image_id),
            lesion_id=_clean(row["lesion_id"]),
            meta=_meta(
                age=_number(row.get("age")),
                sex=_clean_unknown(row.get("sex")),
                site=_clean_unknown(row.get("localization")),
                dx_type=_clean(row.get("dx_type")),
                dataset=_clean(row.get("dataset")),
            ),
        )
    return b.build()
