"""Readers for the official dermoscopy data-set layouts, behind one registry.

``read_dataset(path)`` finds the reader whose ``detect`` recognises ``path`` (or uses the one named
by ``fmt``) and returns a ``DatasetIndex``. Readers are registered with ``@register_reader``; the
CLI lists them with ``list_readers()``.

Registered formats (``taxonomy`` defaults in brackets):

* ``ham10000`` [ham7]: ``HAM10000_metadata.csv`` + ``HAM10000_images_part_1/``, ``_part_2/`` (or a
  flat ``images/``). Option ``images=`` adds an image folder.
* ``isic2018`` [ham7]: ISIC 2018 Task 3 one-hot ``ISIC2018_Task3_<Split>_GroundTruth.csv`` +
  ``ISIC2018_Task3_<Split>_Input/``; ``*_LesionGroupings.csv`` is joined when present. Options
  ``split=`` (train/validation/test, needed when several ground truths are present), ``images=``.
* ``isic2019`` [isic2019_8]: ``ISIC_2019_Training_GroundTruth.csv`` + ``_Metadata.csv`` +
  ``ISIC_2019_Training_Input/``. Option ``split="test"`` reads the test set instead:
  ``ISIC_2019_Test_subset_labels.csv`` (column ``dx``) + ``ISIC_2019_Test_Input_subset/``, or the
  official one-hot ``ISIC_2019_Test_GroundTruth.csv`` + ``ISIC_2019_Test_Metadata.csv`` +
  ``ISIC_2019_Test_Input/``. Without ``split`` the training set is read when its ground truth is
  present, else the test set. The default 8-class taxonomy drops ``UNK`` (into ``skipped``); pass
  ``taxonomy="isic2019_9"`` to keep it. Image ids lose the official ``_downsampled`` suffix
  (``ISIC_0000045_downsampled`` -> ``ISIC_0000045``, ``meta["downsampled"] = True``) so they match
  the same image in other releases; the file is found with or without the suffix.
* ``isic2020`` [binary]: ``ISIC_2020_Training_GroundTruth.csv`` (or ``_v2``) + ``train/``. Binary
  labels come from ``target``; any other taxonomy uses the ``diagnosis`` column (most images are
  "unknown" and are skipped).
* ``ph2`` [ph2_3]: ``PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.{bmp,jpg,png}``, the
  lesion mask ``IMDxxx_lesion/IMDxxx_lesion.*`` as ``mask_ref``, labels from the "Clinical
  Diagnosis" column of ``PH2_dataset.txt`` (the original ``||``-separated table, or a
  tab-separated export of it).
* ``imagefolder`` [folder names, sorted]: one sub-folder per class. Option ``classes=``.
* ``csv`` [sorted labels]: a manifest with ``path,label[,lesion_id][,patient_id][,image_id]``;
  paths relative to the CSV's folder or absolute; other columns go to ``meta``. Option ``classes=``.
* ``dermamnist`` [ham7]: MedMNIST's ``dermamnist*.npz``; option ``split=`` (train/val/test/all).
  ``Record.ref`` is ``/abs/file.npz::train_images[12]``. Note that MedMNIST split HAM10000 by image,
  not by lesion, so its splits share lesions.

Images listed in a label file but absent on disk are skipped with reason "missing file" and counted
in one warning line; ``strict=True`` turns that into a DataError. Records whose label has no class
in the requested taxonomy are skipped with a reason such as "UNK has no HAM7 class".
"""

from __future__ import annotations

import csv
import inspect
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from edgederm.data.records import DatasetIndex, Record, Skipped
from edgederm.data.taxonomy import Taxonomy, get_taxonomy, map_label, normalize_label
from edgederm.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "READERS",
    "ReaderSpec",
    "detect_formats",
    "list_readers",
    "npz_array_shape",
    "read_dataset",
    "read_onehot_csv",
    "read_ph2_table",
    "register_reader",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReaderSpec:
    """A registered reader: its function, detector, and the options it accepts."""

    name: str
    func: Callable[..., DatasetIndex]
    detect: Callable[[Path], bool] | None
    description: str
    default_taxonomy: str | None
    options: tuple[str, ...]
    generic: bool = False


READERS: dict[str, ReaderSpec] = {}

# Keyword arguments every reader receives from read_dataset (not user options).
_FRAMEWORK_KWARGS = ("taxonomy", "strict")


def register_reader(
    name: str,
    *,
    detect: Callable[[Path], bool] | None = None,
    description: str = "",
    default_taxonomy: str | None = None,
    generic: bool = False,
) -> Callable[[Callable[..., DatasetIndex]], Callable[..., DatasetIndex]]:
    """Register ``func(path, *, taxonomy, strict, **options) -> DatasetIndex`` as format ``name``.

    ``detect(path) -> bool`` says whether ``path`` looks like this format (used by
    ``fmt="auto"``; it must be cheap and must not raise). ``default_taxonomy`` is used when the
    caller gives none; ``None`` means the reader builds its own class list (folders, manifests).
    A ``generic`` reader (image folders, manifests) is only auto-detected when no specific one
    matches: an official layout is also "a folder of folders".
    The reader's other keyword-only parameters are its user options.
    """

    def deco(func: Callable[..., DatasetIndex]) -> Callable[..., DatasetIndex]:
        if name in READERS:
            raise ValueError(f"a reader named '{name}' is already registered")
        if default_taxonomy is not None:
            get_taxonomy(default_taxonomy)  # fail at import time on a typo
        params = inspect.signature(func).parameters.values()
        options = tuple(
            p.name
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _FRAMEWORK_KWARGS
        )
        doc_lines = (func.__doc__ or "").strip().splitlines()
        READERS[name] = ReaderSpec(
            name=name,
            func=func,
            detect=detect,
            description=description or (doc_lines[0] if doc_lines else ""),
            default_taxonomy=default_taxonomy,
            options=options,
            generic=generic,
        )
        return func

    return deco


def list_readers() -> list[tuple[str, str]]:
    """(name, one-line description) of the registered readers, sorted by name (for the CLI)."""
    return [(k, READERS[k].description) for k in sorted(READERS)]


def detect_formats(path: str | os.PathLike[str]) -> list[str]:
    """Names of the readers whose detector recognises ``path``.

    Generic readers are listed only when no specific reader recognises ``path``.
    """
    p = Path(path).expanduser()
    found: list[str] = []
    generic: list[str] = []
    for spec in (READERS[k] for k in sorted(READERS)):
        if spec.detect is None:
            continue
        try:
            ok = bool(spec.detect(p))
        except (OSError, ValueError, UnicodeDecodeError, csv.Error):
            ok = False
        if ok:
            (generic if spec.generic else found).append(spec.name)
    return found or generic


def read_dataset(
    path: str | os.PathLike[str],
    fmt: str = "auto",
    *,
    taxonomy: str | Taxonomy | None = None,
    strict: bool = False,
    **opts: Any,
) -> DatasetIndex:
    """Read the data set at ``path`` into a ``DatasetIndex``.

    ``fmt`` names a registered reader, or ``"auto"`` to detect it. ``taxonomy`` is the label
    space of the result (records whose class has no counterpart there are skipped with a reason);
    by default the reader's own. ``strict`` turns missing image files into a DataError. Other
    keyword arguments are reader options (see the module docstring).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist")
    known = ", ".join(sorted(READERS))
    if fmt in (None, "", "auto"):
        matches = detect_formats(p)
        if not matches:
            raise DataError(
                f"cannot tell the format of {p}; name one (fmt=, CLI --format): {known}"
            )
        if len(matches) > 1:
            raise DataError(
                f"{p} looks like several formats ({', '.join(matches)}); "
                f"name one (fmt=, CLI --format): {known}"
            )
        fmt = matches[0]
    key = fmt.strip().lower()
    if key not in READERS:
        raise DataError(f"unknown data format '{fmt}'; known formats: {known}")
    spec = READERS[key]
    bad = sorted(set(opts) - set(spec.options))
    if bad:
        takes = ", ".join(spec.options) or "no options"
        raise DataError(
            f"reader {spec.name} does not take option(s) {', '.join(bad)}; it takes: {takes}"
        )
    tax_name = taxonomy if taxonomy is not None else spec.default_taxonomy
    tax = get_taxonomy(tax_name) if tax_name is not None else None
    index = spec.func(p, taxonomy=tax, strict=strict, **opts)
    log.info(
        "%s: %d images in %d classes from %s (%d skipped)",
        index.name, len(index), len(index.classes), p, len(index.skipped),
    )
    return index


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


# ---------------------------------------------------------------------------------------------
# DermaMNIST (MedMNIST)
# ---------------------------------------------------------------------------------------------

_DERMAMNIST_SPLITS = ("train", "val", "test")


def _detect_dermamnist(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() == ".npz" and "dermamnist" in p.name.lower()


def npz_array_shape(path: str | os.PathLike[str], key: str) -> tuple[int, ...]:
    """Shape of array ``key`` of an ``.npz`` file, read from its header without loading it."""
    import numpy as np

    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(f)
    except KeyError as e:
        raise DataError(f"{path} has no array '{key}'") from e
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"cannot read array '{key}' of {path}: {e}") from e
    return tuple(int(s) for s in shape)


@register_reader(
    "dermamnist",
    detect=_detect_dermamnist,
    description="MedMNIST DermaMNIST .npz (split=train|val|test|all)",
    default_taxonomy="ham7",
)
def read_dermamnist(
    path: Path,
    *,
    taxonomy: Taxonomy,
    strict: bool,
    split: str = "train",
) -> DatasetIndex:
    import numpy as np

    key = str(split).strip().lower()
    if key not in (*_DERMAMNIST_SPLITS, "all"):
        raise DataError(f"unknown split '{split}' for dermamnist; expected train, val, test or all")
    splits = list(_DERMAMNIST_SPLITS) if key == "all" else [key]
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} as an .npz file: {e}") from e
    with npz:
        needed = [f"{s}_{kind}" for s in splits for kind in ("images", "labels")]
        missing = [k for k in needed if k not in npz.files]
        if missing:
            raise DataError(
                f"{path} lacks array(s) {', '.join(missing)} (it has: {', '.join(npz.files)})"
            )
        labels = {s: np.asarray(npz[f"{s}_labels"]).reshape(-1) for s in splits}
    ab = _abs(path)
    b = _Builder(
        f"dermamnist-{key}", path, taxonomy.classes, taxonomy=taxonomy, strict=strict, source=path
    )
    for s in splits:
        n_images = npz_array_shape(path, f"{s}_images")[0]
        lab = labels[s]
        if lab.shape[0] != n_images:
            raise DataError(f"{path}: {s}_labels has {lab.shape[0]} labels for {n_images} images")
        if not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"{path}: {s}_labels are {lab.dtype}, expected integers 0..6")
        bad = sorted({int(v) for v in lab if not 0 <= int(v) <= 6})
        if bad:
            raise DataError(f"{path}: {s}_labels has values outside 0..6: {bad[:10]}")
        for i, v in enumerate(lab.tolist()):
            label, reason = b.target(normalize_label(v, "dermamnist"), "ham7", v)
            b.add(f"{s}_{i}", label, skip_reason=reason, ref=f"{ab}::{s}_images[{i}]",
                  meta={"split": s})
    return b.build()
