"""Helpers shared by the readers: paths, CSV reading, file lookup, the record builder."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from edgederm.data.records import DatasetIndex, Record, Skipped
from edgederm.data.taxonomy import Taxonomy, map_label
from edgederm.errors import DataError

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def _abs(p: Path) -> str:
    # absolute but not resolved: a symlinked image keeps the path the user laid out
    return os.path.abspath(p)


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def _clean_unknown(value: Any) -> str | None:
    s = _clean(value)
    return None if s is None or s.casefold() == "unknown" else s


def _number(value: Any) -> float | int | None:
    s = _clean(value)
    if s is None:
        return None
    try:
        x = float(s)
    except ValueError:
        return None
    if x != x:  # NaN, as pandas writes empty numbers
        return None
    return int(x) if x.is_integer() else x


def _meta(**items: Any) -> dict[str, Any]:
    return {k: v for k, v in items.items() if v is not None}


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV; a missing required column is a DataError naming it and the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            # short rows are padded so a missing trailing cell reads as empty, not as a KeyError
            rows = [
                dict(zip(header, r + [""] * (len(header) - len(r))))
                for r in reader
                if any(c.strip() for c in r)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)} (it has: {', '.join(header) or 'none'})"
        )
    return header, rows


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [h.strip() for h in next(csv.reader(f), [])]


def _find_child(folder: Path, names: Iterable[str], *, want_dir: bool) -> Path | None:
    """The entry of ``folder`` whose name matches one of ``names`` case-insensitively."""
    if not folder.is_dir():
        return None
    wanted = [n.casefold() for n in names]
    entries = {e.name.casefold(): Path(e.path) for e in os.scandir(folder)}
    for n in wanted:
        p = entries.get(n)
        if p is not None and (p.is_dir() if want_dir else p.is_file()):
            return p
    return None


class _FileIndex:
    """Image files of some folders by stem (non-recursive), listed once instead of stat per row."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.folders: list[Path] = []
        self._by_stem: dict[str, Path] = {}
        for folder in folders:
            if folder is None or not folder.is_dir() or folder in self.folders:
                continue
            self.folders.append(folder)
            for e in os.scandir(folder):
                suffix = os.path.splitext(e.name)[1].lower()
                if suffix in IMAGE_SUFFIXES and e.is_file():
                    self._by_stem.setdefault(os.path.splitext(e.name)[0], Path(e.path))

    def find(self, *stems: str) -> Path | None:
        for s in stems:
            p = self._by_stem.get(s)
            if p is not None:
                return p
        return None

    def expected(self, stem: str) -> str:
        """Where a missing image was looked for (for messages): a path, or the bare id."""
        return str(self.folders[0] / f"{stem}.jpg") if self.folders else stem


def _image_folders(base: Path, names: Sequence[str]) -> list[Path]:
    """Existing image folders named ``names`` under ``base``; a zip-style ``X/X/`` nesting too."""
    out = []
    for n in names:
        d = _find_child(base, [n], want_dir=True)
        if d is None:
            continue
        out.append(d)
        inner = _find_child(d, [d.name], want_dir=True)
        if inner is not None:
            out.append(inner)
    return out


def _user_folder(images: str | os.PathLike[str] | None) -> list[Path]:
    if images is None:
        return []
    p = Path(images).expanduser()
    if not p.is_dir():
        raise DataError(f"image folder {p} does not exist")
    return [p]


class _Builder:
    """Collects records and skipped items, maps labels, and reports missing files once."""

    def __init__(
        self,
        name: str,
        root: Path,
        classes: Sequence[str],
        *,
        taxonomy: Taxonomy | None,
        strict: bool,
        source: Path,
    ) -> None:
        self.name = name
        self.root = root
        self.classes = list(classes)
        self.taxonomy = taxonomy
        self.strict = strict
        self.source = source
        self.records: list[Record] = []
        self.skipped: list[Skipped] = []
        self.missing: list[str] = []
        self._ids: set[str] = set()
        self._n_listed = 0
        self.searched: list[Path] = []

    def target(self, label: str | None, src: str | Taxonomy, raw: object) -> tuple[str | None, str]:
        """``label`` (a class of ``src``; None = no class at all) in the target taxonomy."""
        assert self.taxonomy is not None
        tname = self.taxonomy.name.upper()
        if label is None:
            return None, f"{raw} has no {tname} class"
        dst = map_label(label, src, self.taxonomy)
        if dst is None:
            return None, f"{label} has no {tname} class"
        return dst, ""

    def add(
        self,
        image_id: str,
        label: str | None,
        *,
        file: Path | None = None,
        ref: str | None = None,
        expected: Path | str | None = None,
        skip_reason: str = "",
        lesion_id: str | None = None,
        patient_id: str | None = None,
        mask_ref: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Add one listed item: a record, or a skipped entry (label or file missing)."""
        if image_id in self._ids:
            raise DataError(f"image '{image_id}' is listed twice in {self.source}")
        self._ids.add(image_id)
        self._n_listed += 1
        if label is None:
            self.skipped.append(Skipped(image_id, skip_reason or "no label"))
            return
        if ref is None:
            if file is None:
                self.missing.append(str(expected) if expected else image_id)
                self.skipped.append(Skipped(image_id, "missing file"))
                return
            ref = _abs(file)
        self.records.append(
            Record(
                image_id=image_id,
                ref=ref,
                label=label,
                lesion_id=lesion_id,
                patient_id=patient_id,
                mask_ref=mask_ref,
                meta=meta or {},
            )
        )

    def build(self) -> DatasetIndex:
        if self.missing:
            n = len(self.missing)
            if self.searched:
                where = f"; looked in: {', '.join(map(str, self.searched))}"
            else:
                where = "; no image folder found"
            if self.strict:
                raise DataError(
                    f"{n} of {self._n_listed} images listed in {self.source} are missing "
                    f"(first: {self.missing[0]})"
                )
            log.warning(
                "%s: %d of %d images listed in %s are missing and were skipped (first: %s)%s",
                self.name, n, self._n_listed, self.source, self.missing[0], where,
            )
        return DatasetIndex(
            name=self.name,
            root=_abs(self.root),
            classes=list(self.classes),
            records=self.records,
            skipped=self.skipped,
            taxonomy=self.taxonomy.name if self.taxonomy is not None else "",
        )


def read_onehot_csv(path: str | os.PathLike[str], columns: Sequence[str]) -> list[tuple[str, str]]:
    """(image, class) pairs of an ISIC one-hot ground-truth CSV (``image`` + ``columns``).

    Each row must have exactly one of ``columns`` equal to 1; extra columns (e.g. ISIC's
    ``score_weight``) are ignored.
    """
    p = Path(path)
    _, rows = _read_csv(p, ["image", *columns])
    out = []
    for n, row in enumerate(rows, start=2):
        image = _clean(row.get("image"))
        if image is None:
            raise DataError(f"{p} line {n}: empty image name")
        hot = []
        for c in columns:
            try:
                v = float(row.get(c) or 0)
            except ValueError as e:
                raise DataError(
                    f"{p} line {n} ({image}): {c} is not a number: {row.get(c)!r}"
                ) from e
            if v == 1.0:
                hot.append(c)
            elif v != 0.0:
                raise DataError(f"{p} line {n} ({image}): {c} is {v}, expected 0 or 1")
        if len(hot) != 1:
            raise DataError(
                f"{p} line {n} ({image}): expected exactly one 1 among {','.join(columns)}, "
                f"found {len(hot)}"
            )
        out.append((image, hot[0]))
    return out


def _split_name(split: str | None, allowed: dict[str, str], reader: str) -> str | None:
    if split is None:
        return None
    key = str(split).strip().lower()
    if key not in allowed:
        raise DataError(
            f"unknown split '{split}' for {reader}; "
            f"expected one of: {', '.join(sorted(set(allowed)))}"
        )
    return allowed[key]
