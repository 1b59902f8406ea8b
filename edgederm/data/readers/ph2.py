"""PH2: the ``PH2 Dataset images`` tree, lesion masks and ``PH2_dataset.txt``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from edgederm.data.records import DatasetIndex, Skipped
from edgederm.data.taxonomy import Taxonomy, normalize_label
from edgederm.errors import DataError

from .common import (
    IMAGE_SUFFIXES,
    _abs,
    _Builder,
    _find_child,
)
from .registry import register_reader


# ---------------------------------------------------------------------------------------------
# PH2
# ---------------------------------------------------------------------------------------------

_PH2_TXT = "PH2_dataset.txt"
_PH2_IMAGES = "PH2 Dataset images"
_PH2_ID = re.compile(r"^IMD\d+$")


def _ph2_root(p: Path) -> Path:
    if p.is_file():
        return p.parent
    if p.name.casefold() == _PH2_IMAGES.casefold():
        return p.parent
    return p


def _detect_ph2(p: Path) -> bool:
    if p.is_file():
        return p.name.casefold() == _PH2_TXT.casefold()
    if p.name.casefold() == _PH2_IMAGES.casefold():
        return True
    return (_find_child(p, [_PH2_TXT], want_dir=False) is not None
            or _find_child(p, [_PH2_IMAGES], want_dir=True) is not None)


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def read_ph2_table(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Rows of ``PH2_dataset.txt`` by image name, keyed by snake_case column name.

    The original release is a ``||``-separated table (criteria inside one ``||`` cell are ``|``
    separated) under a header naming "Clinical Diagnosis"; tab-separated exports are accepted too.
    Legend lines after the table are ignored.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"cannot read {p}: {e}") from e

    def cells(line: str, piped: bool) -> list[str]:
        if piped:
            # "|| a || b | c ||" -> "a", "b", "c"; "||||" stays an empty cell
            return [c.strip() for c in line.strip().strip("|").replace("||", "|").split("|")]
        return [c.strip() for c in line.split("\t")]

    header: list[str] | None = None
    piped = False
    table: dict[str, dict[str, str]] = {}
    for n, line in enumerate(lines, start=1):
        if header is None:
            if "clinical diagnosis" in line.casefold():
                piped = "|" in line
                header = [_snake(c) for c in cells(line, piped)]
            continue
        row = cells(line, piped)
        name_col = header.index("name") if "name" in header else 0
        if len(row) <= name_col or not _PH2_ID.match(row[name_col]):
            continue  # blank line or legend
        rec = {h: v for h, v in zip(header, row) if h and v}
        if "clinical_diagnosis" not in rec:
            raise DataError(f"{p} line {n}: {row[name_col]} has no clinical diagnosis")
        table[row[name_col]] = rec
    if header is None:
        raise DataError(f"{p} has no table header with a 'Clinical Diagnosis' column")
    if "clinical_diagnosis" not in header:
        raise DataError(f"{p}: cannot find the 'Clinical Diagnosis' column in its header")
    return table


def _ph2_file(folder: Path, stem: str) -> Path | None:
    if not folder.is_dir():
        return None
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        s, suffix = os.path.splitext(e.name)
        if s == stem and suffix.lower() in IMAGE_SUFFIXES and e.is_file():
            return Path(e.path)
    return None


@register_reader(
    "ph2",
    detect=_detect_ph2,
    description="PH2: 'PH2 Dataset images/IMDxxx/...' + PH2_dataset.txt (lesion masks included)",
    default_taxonomy="ph2_3",
)
def read_ph2(path: Path, *, taxonomy: Taxonomy, strict: bool) -> DatasetIndex:
    root = _ph2_root(path)
    txt = _find_child(root, [_PH2_TXT], want_dir=False)
    if txt is None:
        xlsx = " (reading PH2_dataset.xlsx is not supported)" if _find_child(
            root, ["PH2_dataset.xlsx"], want_dir=False) else ""
        raise DataError(f"{root} has no {_PH2_TXT}{xlsx}")
    table = read_ph2_table(txt)
    images_dir = _find_child(root, [_PH2_IMAGES], want_dir=True) or (root / _PH2_IMAGES)
    b = _Builder("ph2", root, taxonomy.classes, taxonomy=taxonomy, strict=strict, source=txt)
    if images_dir.is_dir():
        b.searched = [images_dir]
    for image_id, row in table.items():
        code = row["clinical_diagnosis"]
        label, reason = b.target(normalize_label(code, "ph2"), "ph2_3", code)
        case = images_dir / image_id
        image = _ph2_file(case / f"{image_id}_Dermoscopic_Image", image_id)
        mask = _ph2_file(case / f"{image_id}_lesion", f"{image_id}_lesion")
        b.add(
            image_id,
            label,
            skip_reason=reason,
            file=image,
            expected=case / f"{image_id}_Dermoscopic_Image" / f"{image_id}.bmp",
            mask_ref=_abs(mask) if mask is not None else None,
            meta={k: v for k, v in row.items() if k not in ("name", "clinical_diagnosis")},
        )
    if images_dir.is_dir():
        for e in sorted(os.scandir(images_dir), key=lambda e: e.name):
            if e.is_dir() and _PH2_ID.match(e.name) and e.name not in table:
                b.skipped.append(Skipped(e.name, f"no label in {_PH2_TXT}"))
    return b.build()
