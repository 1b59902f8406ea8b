"""Lesion-grouped, label-stratified splits, and the split files that make them reusable.

Clinical honesty first: every image of a lesion (else of a patient, else the image alone — see
``Record.group``) lands in the same split, so a test score never rewards recognising a lesion the
model was trained on. Within that constraint splits are stratified by label with scikit-learn's
``StratifiedGroupKFold``, then repaired so that every class with enough groups is present in every
split (a test set without a single dermatofibroma reports nothing about dermatofibromas).

A split file is a CSV (``image_id,label,group,split`` and ``fold`` for k-fold) whose first line is a
``# edgederm-split {json}`` comment carrying the data set fingerprint, the seed and the fractions;
reading it back refuses data that is not the data it was made for.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from edgederm.data.records import DatasetIndex
from edgederm.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TEST_FOLD = -1  # make_kfold(test=...) marks the held-out test images with this fold number
HEADER_PREFIX = "# edgederm-split "
FORMAT_VERSION = 1
_MAX_FOLDS = 10  # carving m of k folds: more folds approximate fractions better but stratify worse
_FRACTION_SLACK = 0.05  # fewer folds than ideal are fine while m / k stays this close to the fraction asked

SplitAssignment = dict[str, str]
FoldAssignment = dict[str, int]
Assignment = Union[SplitAssignment, FoldAssignment]


# ------------------------------------------------------------------------------------- carving

def _fold_plan(frac: float, n_groups: int) -> tuple[int, int]:
    """(k, m): take m of k StratifiedGroupKFold folds so that m / k is closest to ``frac``."""
    best: tuple[float, int, int] | None = None
    for k in range(2, min(_MAX_FOLDS, n_groups) + 1):
        m = min(max(1, round(frac * k)), k - 1)
        err = abs(m / k - frac)
        if best is None or err < best[0] - 1e-12:
            best = (err, k, m)
    assert best is not None
    return best[1], best[2]


def _plan_fraction(frac: float, max_folds: int) -> float:
    k, m = _fold_plan(frac, max_folds)
    return m / k


def _class_counts(labels: np.ndarray, groups: np.ndarray) -> str:
    """``nv 6 images/6 groups, mel 4/3, ...`` (largest first) for messages."""
    per = Counter(labels.tolist())
    grp = {c: len({g for g, lab in zip(groups.tolist(), labels.tolist()) if lab == c}) for c in per}
    items = sorted(per.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return ", ".join(f"{c} {n}" + (f" images/{grp[c]} groups" if i == 0 else f"/{grp[c]}") for i, (c, n) in enumerate(items))


def _carve(labels: np.ndarray, groups: np.ndarray, frac: float, seed: int, *, what: str = "", share: float = 1.0,
           among: str = "") -> np.ndarray:
    """Boolean mask of about ``frac`` of the samples: whole groups, stratified by label.

    StratifiedGroupKFold needs some class with at least k images for k folds. When every class is
    smaller than the k that fits ``frac`` best, fewer folds are used if their fraction is still
    within ``_FRACTION_SLACK`` of ``frac`` (a warning says so); otherwise a one-line DataError
    names the class counts and the minimum needed. ``share`` (these samples' share of the data set)
    and ``among`` (which images these are) are for the messages.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError(f"cannot split {n_groups} lesion/patient group(s): need at least 2 per split")
    k, m = _fold_plan(frac, n_groups)
    largest = max(Counter(labels.tolist()).values())
    if largest < k:
        what = what or f"{frac:.0%}"
        cap = min(largest, n_groups)
        k2, m2 = _fold_plan(frac, cap) if cap >= 2 else (0, 0)
        if cap >= 2 and abs(m2 / k2 - frac) <= _FRACTION_SLACK:
            log.warning("%s split: the largest class has only %d images, too few for %d stratified folds; carved %d of %d "
                        "folds instead (about %.0f%% of all images, still lesion-grouped and stratified)", what, largest, k,
                        m2, k2, 100 * share * m2 / k2)
            k, m = k2, m2
        else:
            need = next((c for c in range(2, k + 1) if abs(_plan_fraction(frac, c) - frac) <= _FRACTION_SLACK), k)
            raise DataError(
                f"too few images per class for a stratified, lesion-grouped {what} split ({among}{_class_counts(labels, groups)}): "
                f"the largest class needs at least {need} images (it has {largest}); add images or change --val/--test"
            )
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    mask = np.zeros(len(labels), dtype=bool)
    with warnings.catch_warnings():
        # "The least populated class in y has only N members": expected for rare classes; the
        # repair step below takes care of their presence.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for i, (_, fold) in enumerate(sgkf.split(np.zeros((len(labels), 1)), labels, groups)):
            if i >= m:
                break
            mask[fold] = True
    return mask


def _ensure_class_presence(
    labels: np.ndarray, groups: np.ndarray, split: np.ndarray, names: list[str]
) -> None:
    """Move whole groups so every class with >= len(names) groups is in every split (in place).

    The donor is the split holding most groups of the missing class; the group moved is the
    smallest one whose departure leaves the donor with every class it had.
    """
    group_pos: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        group_pos[g].append(i)
    group_labels = {g: set(labels[p].tolist()) for g, p in group_pos.items()}

    for cls in sorted(set(labels.tolist())):
        cls_groups = sorted(g for g, ls in group_labels.items() if cls in ls)
        if len(cls_groups) < len(names):
            continue  # not possible: fewer groups than splits
        for target in names:
            per_split: dict[str, list[str]] = defaultdict(list)
            for g in cls_groups:
                per_split[split[group_pos[g][0]]].append(g)
            if per_split.get(target):
                continue
            donors = sorted(
                (s for s in names if len(per_split.get(s, [])) >= 2),
                key=lambda s: (-len(per_split[s]), names.index(s)),
            )
            moved = False
            for donor in donors:
                donor_counts = Counter(
                    lab for g in {groups[i] for i in np.flatnonzero(split == donor)} for lab in group_labels[g]
                )
                for g in sorted(per_split[donor], key=lambda g: (len(group_pos[g]), g)):
                    if all(donor_counts[lab] >= 2 for lab in group_labels[g]):
                        split[group_pos[g]] = target
                        log.debug("moved group %s (%s) from %s to %s", g, cls, donor, target)
                        moved = True
                        break
                if moved:
                    break


def _split_arrays(index: DatasetIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(index) == 0:
        raise DataError(f"data set {index.name or index.root!r} has no images to split")
    ids = np.array([r.image_id for r in index.records], dtype=object)
    if len(set(ids.tolist())) != len(ids):
        dup = next(i for i, c in Counter(ids.tolist()).items() if c > 1)
        raise DataError(f"image id {dup!r} occurs more than once in {index.name or index.root!r}; ids must be unique to split")
    labels = np.array([r.label for r in index.records], dtype=object)
    groups = np.array(index.groups(), dtype=object)
    return ids, labels, groups


def make_splits(index: DatasetIndex, *, val: float = 0.15, test: float = 0.15, seed: int = 42) -> SplitAssignment:
    """Map every image id to "train", "val" or "test"; groups never cross, labels stratified.

    Deterministic for a given data set and seed. ``val`` / ``test`` are fractions of images (met
    approximately: whole groups move, and folds come in 1/k steps); 0 leaves that split out.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"split fractions must be >= 0 and leave room for training: val={val}, test={test}")
    ids, labels, groups = _split_arrays(index)
    split = np.full(len(ids), "train", dtype=object)
    if test > 0:
        split[_carve(labels, groups, test, seed, what=f"{test:.0%} test")] = "test"
    if val > 0:
        rest = np.flatnonzero(split == "train")
        mask = _carve(labels[rest], groups[rest], val / (1 - test), seed + 1, share=1 - test, what=f"{val:.0%} val",
                      among=f"of the {len(rest)} images left after the test split: " if test > 0 else "")
        split[rest[mask]] = "val"
    names = ["train"] + (["val"] if val > 0 else []) + (["test"] if test > 0 else [])
    if len(names) > 1:
        _ensure_class_presence(labels, groups, split, names)
    assignment = dict(zip(ids.tolist(), split.tolist()))
    _log_fractions(index, assignment)
    return assignment


def make_kfold(index: DatasetIndex, *, k: int = 5, seed: int = 42, test: float = 0.0) -> FoldAssignment:
    """Map every image id to a fold 0..k-1 (groups never cross folds, labels stratified).

    With ``test`` > 0 a held-out test part is carved first the way ``make_splits`` carves its test
    part (grouped, stratified, every class present when possible) and marked ``TEST_FOLD`` (-1);
    it belongs to no fold.
    Use ``kfold_to_split(folds, f)`` to get the train/val(/test) assignment of fold ``f``.
    """
    if k < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}")
    if not 0 <= test < 1:
        raise DataError(f"test fraction must be in [0, 1), got {test}")
    from sklearn.model_selection import StratifiedGroupKFold

    ids, labels, groups = _split_arrays(index)
    fold = np.full(len(ids), TEST_FOLD, dtype=int)
    part = np.full(len(ids), "train", dtype=object)
    if test > 0:
        part[_carve(labels, groups, test, seed, what=f"{test:.0%} test")] = "test"
        _ensure_class_presence(labels, groups, part, ["train", "test"])
    rest = np.flatnonzero(part == "train")
    n_groups = len(np.unique(groups[rest]))
    if n_groups < k:
        raise DataError(f"cannot make {k} folds from {n_groups} lesion/patient groups; lower k")
    if max(Counter(labels[rest].tolist()).values()) < k:  # StratifiedGroupKFold's own condition
        raise DataError(f"too few images per class for {k} stratified folds ({_class_counts(labels[rest], groups[rest])}): "
                        f"the largest class needs at least {k} images; lower k")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for f, (_, part) in enumerate(sgkf.split(np.zeros((len(rest), 1)), labels[rest], groups[rest])):
            fold[rest[part]] = f
    assignment = dict(zip(ids.tolist(), fold.tolist()))
    sizes = Counter(assignment.values())
    log.info(
        "k-fold: %s", ", ".join(f"{'test' if f == TEST_FOLD else f'fold {f}'} {sizes[f]}" for f in sorted(sizes))
    )
    return assignment


def kfold_to_split(folds: FoldAssignment, fold: int) -> SplitAssignment:
    """Fold ``fold`` becomes "val", the other folds "train", the held-out ``TEST_FOLD`` "test"."""
    if fold == TEST_FOLD or fold not in set(folds.values()):
        raise DataError(f"fold {fold} is not in this k-fold assignment")
    return {i: ("test" if f == TEST_FOLD else "val" if f == fold else "train") for i, f in folds.items()}


# ------------------------------------------------------------------------------------ applying

def apply_split(index: DatasetIndex, assignment: SplitAssignment) -> dict[str, DatasetIndex]:
    """The train / val / test sub-indices (always all three keys; a split may be empty).

    Strict on purpose: an image of the data set without a split, or a split entry that is not an
    image of the data set, means the assignment belongs to other data, and is a ``DataError``.
    """
    ids = {r.image_id for r in index.records}
    missing = [r.image_id for r in index.records if r.image_id not in assignment]
    if missing:
        raise DataError(f"{len(missing)} images have no split (e.g. {', '.join(missing[:3])}); regenerate the split")
    extra = [i for i in assignment if i not in ids]
    if extra:
        raise DataError(f"the split lists {len(extra)} images not in the data set (e.g. {', '.join(extra[:3])})")
    bad = sorted({str(s) for s in assignment.values()} - set(SPLITS))
    if bad:
        raise DataError(f"unknown split name(s) {', '.join(bad)}: expected train, val, test (use kfold_to_split for folds)")
    positions: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, r in enumerate(index.records):
        positions[assignment[r.image_id]].append(i)
    base = index.name or "data"
    return {s: index.subset(pos, name=f"{base}:{s}") for s, pos in positions.items()}


def split_fractions(index: DatasetIndex, assignment: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{"all": {split: fraction}, class: {split: fraction of that class}, ...}`` (images)."""
    present = {str(v) for v in assignment.values()}
    others = sorted(present - set(SPLITS), key=lambda s: (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s))
    names = [s for s in SPLITS if s in present] + others
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for r in index.records:
        if r.image_id in assignment:
            s = str(assignment[r.image_id])
            per["all"][s] += 1
            per[r.label][s] += 1
    out: dict[str, dict[str, float]] = {}
    for key in ["all", *index.classes]:
        total = sum(per[key].values())
        out[key] = {s: (per[key][s] / total if total else 0.0) for s in names}
    return out


def _log_fractions(index: DatasetIndex, assignment: Mapping[str, Any]) -> None:
    fr = split_fractions(index, assignment)
    counts = index.class_counts()
    lines = [f"  {'all':<10} " + "  ".join(f"{s} {v:.3f}" for s, v in fr["all"].items()) + f"  (n={len(index)})"]
    for c in index.classes:
        lines.append(f"  {c:<10} " + "  ".join(f"{s} {v:.3f}" for s, v in fr[c].items()) + f"  (n={counts[c]})")
    log.info("achieved split fractions per class:\n%s", "\n".join(lines))


# ---------------------------------------------------------------------------------- split files

def _is_fold_assignment(assignment: Mapping[str, Any]) -> bool:
    return bool(assignment) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in assignment.values())


def write_split_csv(
    path: str | os.PathLike[str],
    index: DatasetIndex,
    assignment: Assignment,
    *,
    seed: int,
    extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the split file atomically (temp file + ``os.replace``); returns its path.

    Rows follow the index order. k-fold assignments (int values) get a ``fold`` column; their
    ``split`` column is "test" for the held-out part and "train" otherwise.
    """
    path = Path(path)
    ids = {r.image_id for r in index.records}
    unknown = [i for i in assignment if i not in ids]
    if unknown:
        raise DataError(f"cannot write split {path.name}: {len(unknown)} ids are not in the data set (e.g. {unknown[0]})")
    kfold = _is_fold_assignment(assignment)
    rows = [r for r in index.records if r.image_id in assignment]
    fr = split_fractions(index, assignment)
    meta: dict[str, Any] = {
        "format": "edgederm-split",
        "version": FORMAT_VERSION,
        "kind": "kfold" if kfold else "split",
        "fingerprint": index.fingerprint(),
        "dataset": index.name,
        "n_images": len(index),
        "classes": list(index.classes),
        "seed": seed,
        "fractions": {k: round(v, 6) for k, v in fr["all"].items()},
    }
    if kfold:
        meta["k"] = len({v for v in assignment.values() if v != TEST_FOLD})
    for key, value in (extra_meta or {}).items():
        if key in meta:
            raise ValueError(f"extra_meta may not override {key!r}")
        meta[key] = value

    buf = io.StringIO()
    buf.write(HEADER_PREFIX + json.dumps(meta, sort_keys=False) + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", "label", "group", "split"] + (["fold"] if kfold else []))
    for r in rows:
        a = assignment[r.image_id]
        if kfold:
            f = int(a)
            writer.writerow([r.image_id, r.label, r.group, "test" if f == TEST_FOLD else "train", "" if f == TEST_FOLD else f])
        else:
            writer.writerow([r.image_id, r.label, r.group, a])

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote split file %s (%d images, fingerprint %s)", path, len(rows), meta["fingerprint"])
    return path


def read_split_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a split file (fingerprint, seed, fractions, ...)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except FileNotFoundError:
        raise DataError(f"split file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from None
    if not first.startswith(HEADER_PREFIX):
        raise DataError(f"{path} is not an edgederm split file (its first line is not '{HEADER_PREFIX.strip()} {{...}}')")
    try:
        meta = json.loads(first[len(HEADER_PREFIX):])
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: unreadable split header ({exc})") from None
    if not isinstance(meta, dict) or meta.get("version", 0) > FORMAT_VERSION:
        raise DataError(f"{path}: split file version {meta.get('version') if isinstance(meta, dict) else '?'} is newer than this edgederm understands")
    return meta


def read_split_csv(
    path: str | os.PathLike[str], index: DatasetIndex, *, check_fingerprint: bool = True
) -> Assignment:
    """Read a split file for ``index``: image_id -> split name (or -> fold for k-fold files).

    Refuses (``DataError``, one line) a file listing image ids not in the data, or — unless
    ``check_fingerprint`` is False — one made for different data (another fingerprint: images,
    labels or lesion ids changed). With the fingerprint check off, every image of the data must
    still have a row.
    """
    path = Path(path)
    meta = read_split_meta(path)
    with open(path, encoding="utf-8", newline="") as fh:
        fh.readline()
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        kfold = meta.get("kind") == "kfold"
        need = ["image_id", "split"] + (["fold"] if kfold else [])
        missing_cols = [c for c in need if c not in fields]
        if missing_cols:
            raise DataError(f"{path}: missing column(s) {', '.join(missing_cols)} (has: {', '.join(fields)})")
        assignment: dict[str, Any] = {}
        for n, row in enumerate(reader, start=3):
            iid = (row.get("image_id") or "").strip()
            if not iid:
                raise DataError(f"{path}:{n}: empty image_id")
            if iid in assignment:
                raise DataError(f"{path}:{n}: image id {iid!r} is listed twice")
            split = (row.get("split") or "").strip()
            if split not in SPLITS:
                raise DataError(f"{path}:{n}: split {split!r} is not one of train, val, test")
            if kfold:
                fold = (row.get("fold") or "").strip()
                if split == "test":
                    assignment[iid] = TEST_FOLD
                else:
                    try:
                        assignment[iid] = int(fold)
                    except ValueError:
                        raise DataError(f"{path}:{n}: fold {fold!r} is not an integer") from None
            else:
                assignment[iid] = split

    ids = {r.image_id for r in index.records}
    unknown = [i for i in assignment if i not in ids]
    if unknown:
        raise DataError(
            f"{path.name} lists {len(unknown)} image ids not in the data set {index.name or index.root!r} "
            f"(e.g. {', '.join(unknown[:3])}): it was made for other data; regenerate the split"
        )
    if check_fingerprint:
        want, have = meta.get("fingerprint"), index.fingerprint()
        if want != have:
            raise DataError(
                f"{path.name} was made for data fingerprint {want}, but this data set's is {have} "
                "(images, labels or lesion ids changed): regenerate the split, or delete the file"
            )
    absent = [r.image_id for r in index.records if r.image_id not in assignment]
    if absent:
        raise DataError(f"{path.name} has no row for {len(absent)} images of the data set (e.g. {', '.join(absent[:3])})")
    return assignment


def subsample(index: DatasetIndex, n: int, *, seed: int = 0, min_per_class: int = 12) -> DatasetIndex:
    """A deterministic, lesion-grouped, class-stratified subset of about ``n`` images.

    For smoke runs and toy-scale tests of real recipes: whole lesions are kept or dropped, each
    class keeps its share of ``n`` but at least ``min_per_class`` images (or all it has), so a
    rare class (ISIC 2020's 1.8% malignant) still reaches the validation and test splits.
    """
    if n >= len(index):
        return index
    rng = np.random.default_rng(seed)
    by_class: dict[str, dict[str, list[int]]] = {}
    for i, r in enumerate(index.records):
        by_class.setdefault(r.label, {}).setdefault(r.group, []).append(i)
    keep: list[int] = []
    total = len(index)
    for label in sorted(by_class):
        groups = by_class[label]
        count = sum(len(v) for v in groups.values())
        want = min(count, max(min_per_class, round(n * count / total)))
        names = sorted(groups)
        rng.shuffle(names)
        got = 0
        for g in names:
            if got >= want:
                break
            keep.extend(groups[g])
            got += len(groups[g])
    out = index.subset(sorted(keep), name=f"{index.name}[{len(keep)} of {total}]")
    out.skipped = index.skipped
    return out
