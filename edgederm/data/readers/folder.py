"""Generic layouts: one image folder per class, and CSV manifests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from edgederm.data.records import DatasetIndex
from edgederm.data.taxonomy import Taxonomy
from edgederm.errors import DataError

from .common import (
    IMAGE_SUFFIXES,
    _Builder,
    _clean,
    _csv_header,
    _read_csv,
)
from .registry import register_reader


# ---------------------------------------------------------------------------------------------
# generic: image folders and CSV manifests
# ---------------------------------------------------------------------------------------------

_LABEL_FILE_SUFFIXES = frozenset({".csv", ".txt", ".npz", ".xlsx", ".json", ".tsv"})


def _has_images(folder: Path, limit: int = 50) -> bool:
    for i, e in enumerate(os.scandir(folder)):
        if i >= limit:
            return False
        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
            return True
    return False


def _detect_imagefolder(p: Path) -> bool:
    if not p.is_dir():
        return False
    subdirs = []
    for e in os.scandir(p):
        if e.name.startswith("."):
            continue
        if e.is_file() and os.path.splitext(e.name)[1].lower() in _LABEL_FILE_SUFFIXES:
            return False  # a label file next to the folders: some other layout
        if e.is_dir():
            subdirs.append(Path(e.path))
    return bool(subdirs) and any(_has_images(d) for d in subdirs)


def _class_list(classes: str | Sequence[str] | None) -> list[str] | None:
    if classes is None:
        return None
    out = [c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes)]
    out = [c for c in out if c]
    if len(set(out)) != len(out) or not out:
        raise DataError(f"classes must be a non-empty list without duplicates, got {out}")
    return out


def _resolve_labels(
    labels: Iterable[str],
    *,
    taxonomy: Taxonomy | None,
    classes: list[str] | None,
    what: str,
) -> tuple[list[str], dict[str, str]]:
    """Class list and raw label -> class, matching a given list case-insensitively."""
    uniq = sorted(set(labels))
    if taxonomy is not None and classes is not None:
        if [taxonomy.canonical(c) for c in classes] != list(taxonomy.classes):
            raise DataError(
                f"classes {classes} do not match taxonomy {taxonomy.name} {list(taxonomy.classes)}"
            )
    if taxonomy is None and classes is None:
        return uniq, {u: u for u in uniq}
    target = list(taxonomy.classes) if taxonomy is not None else list(classes or [])
    lookup = Taxonomy("given", tuple(target), frozenset())
    mapping, unknown = {}, []
    for u in uniq:
        c = lookup.canonical(u)
        if c is None:
            unknown.append(u)
        else:
            mapping[u] = c
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise DataError(
            f"{what} has {len(unknown)} label(s) not in the class list ({shown}); "
            f"classes: {', '.join(target)}"
        )
    return target, mapping


def _unique_ids(stems: list[str], fallbacks: list[str]) -> list[str]:
    """Stems as image ids when unique (they match ids elsewhere), else the longer fallbacks."""
    return stems if len(set(stems)) == len(stems) else fallbacks


@register_reader(
    "imagefolder",
    detect=_detect_imagefolder,
    description="a folder with one sub-folder of images per class",
    default_taxonomy=None,
    generic=True,
)
def read_imagefolder(
    path: Path,
    *,
    taxonomy: Taxonomy | None,
    strict: bool,
    classes: str | Sequence[str] | None = None,
) -> DatasetIndex:
    if not path.is_dir():
        raise DataError(f"{path} is not a folder")
    folders = sorted(
        (Path(e.path) for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")),
        key=lambda d: d.name,
    )
    if not folders:
        raise DataError(f"{path} has no class sub-folders")
    given = _class_list(classes)
    class_list, mapping = _resolve_labels(
        [d.name for d in folders], taxonomy=taxonomy, classes=given, what=f"{path} (folder names)"
    )
    files: list[tuple[Path, str]] = []
    for d in folders:
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            for fn in sorted(filenames):
                if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in IMAGE_SUFFIXES:
                    files.append((Path(dirpath) / fn, mapping[d.name]))
    if not files:
        raise DataError(
            f"{path} has class folders but no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    ids = _unique_ids(
        [f.stem for f, _ in files],
        [f.relative_to(path).with_suffix("").as_posix() for f, _ in files],
    )
    b = _Builder("imagefolder", path, class_list, taxonomy=taxonomy, strict=strict, source=path)
    for image_id, (f, label) in zip(ids, files):
        b.add(image_id, label, file=f)
    return b.build()


def _detect_csv(p: Path) -> bool:
    if not (p.is_file() and p.suffix.lower() == ".csv"):
        return False
    header = {h.casefold() for h in _csv_header(p)}
    return {"path", "label"} <= header


@register_reader(
    "csv",
    detect=_detect_csv,
    description="a CSV manifest: path,label[,lesion_id][,patient_id] (paths relative to the CSV)",
    default_taxonomy=None,
    generic=True,
)
def read_csv_manifest(
    path: Path,
    *,
    taxonomy: Taxonomy | None,
    strict: bool,
    classes: str | Sequence[str] | None = None,
) -> DatasetIndex:
    if not path.is_file():
        raise DataError(f"{path} is not a CSV file")
    header, rows = _read_csv(path, [])
    # accept any capitalisation of the column names
    cols = {h.casefold(): h for h in header}
    missing = [c for c in ("path", "label") if c not in cols]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)} (it has: {', '.join(header)})"
        )
    col = {k: cols.get(k) for k in ("path", "label", "lesion_id", "patient_id", "image_id")}
    for n, r in enumerate(rows, start=2):
        if not _clean(r.get(col["path"])) or not _clean(r.get(col["label"])):
            raise DataError(f"{path} line {n}: empty path or label")
    class_list, mapping = _resolve_labels(
        [r[col["label"]].strip() for r in rows], taxonomy=taxonomy, classes=_class_list(classes),
        what=str(path),
    )
    base = path.parent
    paths = [Path(r[col["path"]].strip()).expanduser() for r in rows]
    full = [p if p.is_absolute() else base / p for p in paths]
    if col["image_id"]:
        ids = [_clean(r.get(col["image_id"])) or p.stem for r, p in zip(rows, paths)]
    else:
        ids = _unique_ids([p.stem for p in paths], [p.with_suffix("").as_posix() for p in paths])
    known = {v for v in col.values() if v}
    b = _Builder("csv", path, class_list, taxonomy=taxonomy, strict=strict, source=path)
    for image_id, f, r in zip(ids, full, rows):
        b.add(
            image_id,
            mapping[r[col["label"]].strip()],
            file=f if f.is_file() else None,
            expected=f,
            lesion_id=_clean(r.get(col["lesion_id"])) if col["lesion_id"] else None,
            patient_id=_clean(r.get(col["patient_id"])) if col["patient_id"] else None,
            meta={k: v.strip() for k, v in r.items() if k not in known and v and v.strip()},
        )
    return b.build()
