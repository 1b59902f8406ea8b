"""``edgederm data check-leakage``: is anything of a test lesion in training?

Two checks on an assignment (image id -> split, or -> fold):

1. **Groups across splits** — a lesion (else patient) whose images sit in more than one split.
   Exact, cheap, always run.
2. **Near-duplicate images across splits** — for data without lesion ids (or when asked), the
   same picture re-encoded, resized or colour-adjusted under another image id. Images are hashed
   with a perceptual hash (``imagehash.phash``) and every pair in different splits (and different
   groups) within ``max_distance`` bits is reported, with an all-pairs numpy comparison.

The hash is taken on the *central* part of the image (``crop``, default 60 % of each side).
Measured on the ISIC 2019 subset in shared/data (2,567 images, 3.3 M pairs): on the full frame,
the black circular field of view of contact dermoscopes (BCN20000) and the plain pink skin around
small nevi (HAM10000) dominate an 8x8 hash: 16 pairs of *different* lesions came within 4 bits.
On the central 60 % (inside the circle of those images) no pair of different lesions came closer
than 6 bits, while 99 % of re-encoded copies (half size at JPEG q70; +10 % brightness; both plus
-10 % contrast at q60) stay within 4 bits. A copy cropped differently is not a near-duplicate for
any global hash, and a second photograph of the same lesion is caught only sometimes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, MutableMapping

import numpy as np

from edgederm.data.images import load_image
from edgederm.data.records import DatasetIndex, Record, Skipped
from edgederm.errors import ImageError

log = logging.getLogger(__name__)

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_HASH_DECODE_SIZE = 256  # reduced decode for hashing: phash looks at 4*hash_size pixels anyway


@dataclass
class GroupCrossing:
    """A lesion/patient whose images are in more than one split."""

    group: str
    splits: dict[str, list[str]]  # split name -> image ids

    def format(self) -> str:
        parts = "; ".join(f"{s}: {', '.join(ids)}" for s, ids in self.splits.items())
        return f"{self.group} in {len(self.splits)} splits ({parts})"


@dataclass
class NearDuplicate:
    """Two images in different splits whose perceptual hashes are within the distance."""

    image_a: str
    image_b: str
    split_a: str
    split_b: str
    distance: int

    def format(self) -> str:
        return f"{self.image_a} ({self.split_a}) ~ {self.image_b} ({self.split_b}): distance {self.distance}"


@dataclass
class LeakageReport:
    """What ``check_leakage`` found; ``ok`` is False when anything crosses splits.

    ``near_duplicates_checked`` says whether images were hashed at all (``not_run_reason`` if
    not); ``skipped`` lists images that could not be decoded for hashing.
    """

    n_images: int
    n_groups: int
    group_noun: str
    crossings: list[GroupCrossing] = field(default_factory=list)
    near_duplicates_checked: bool = False
    near_duplicates: list[NearDuplicate] = field(default_factory=list)
    hash_method: str = ""
    max_distance: int = 0
    n_hashed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    unassigned: int = 0
    not_run_reason: str = ""

    @property
    def ok(self) -> bool:
        """No group crosses splits and no near-duplicate pair spans two splits."""
        return not self.crossings and not self.near_duplicates

    def summary(self) -> str:
        n = len(self.crossings)
        noun = self.group_noun if n != 1 else self.group_noun.rstrip("s").replace("s/", "/")
        first = f"{n} {noun} cross{'es' if n == 1 else ''} splits"
        if self.near_duplicates_checked:
            p = len(self.near_duplicates)
            second = (
                f"{p} near-duplicate pair{'s' if p != 1 else ''} across splits "
                f"(hash {self.hash_method}, distance ≤ {self.max_distance})"
            )
        else:
            second = f"near-duplicate search not run ({self.not_run_reason or 'not requested'})"
        return f"{first}; {second}"

    def format(self, max_items: int = 20) -> str:
        """Readable text for the CLI: the summary line, then the offending groups and pairs."""
        lines = [self.summary()]
        if self.crossings:
            lines.append(f"{self.group_noun} in more than one split:")
            lines += [f"  {c.format()}" for c in self.crossings[:max_items]]
            if len(self.crossings) > max_items:
                lines.append(f"  ... and {len(self.crossings) - max_items} more")
        if self.near_duplicates:
            lines.append("near-duplicate images in different splits (check them; same lesion?):")
            lines += [f"  {d.format()}" for d in self.near_duplicates[:max_items]]
            if len(self.near_duplicates) > max_items:
                lines.append(f"  ... and {len(self.near_duplicates) - max_items} more")
        if self.skipped:
            lines.append(f"{len(self.skipped)} images could not be hashed (e.g. {self.skipped[0].reason})")
        if self.unassigned:
            lines.append(f"{self.unassigned} images of the data set have no split and were not checked")
        return "\n".join(lines)


def _split_name(value: Any) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return "test" if value == -1 else f"fold {int(value)}"
    return str(value)


def _group_noun(records: list[Record]) -> str:
    has_lesion = any(r.lesion_id for r in records)
    has_patient = any(r.patient_id and not r.lesion_id for r in records)
    if has_lesion and has_patient:
        return "lesions/patients"
    if has_lesion:
        return "lesions"
    if has_patient:
        return "patients"
    return "groups"


def _center_crop(img: Any, frac: float) -> Any:
    if frac >= 1.0:
        return img
    w, h = img.size
    box = (round(w * (1 - frac) / 2), round(h * (1 - frac) / 2), round(w * (1 + frac) / 2), round(h * (1 + frac) / 2))
    return img.crop(box)


def perceptual_hash(ref: str, *, hash_size: int = 8, crop: float = 0.6) -> np.ndarray:
    """The phash bits (packed, uint8) of an image's central ``crop``, decoded via ``load_image``."""
    import imagehash

    img = load_image(ref, decode_size=_HASH_DECODE_SIZE)
    bits = imagehash.phash(_center_crop(img, crop), hash_size=hash_size).hash
    return np.packbits(np.asarray(bits, dtype=bool).ravel())


def hamming_pairs(hashes: np.ndarray, max_distance: int, *, block_bytes: int = 1 << 25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with Hamming distance ≤ ``max_distance`` among packed hashes (N x B uint8).

    XOR + byte popcount table, in row blocks so memory stays around ``block_bytes`` for any N.
    Returns (i, j, distance) arrays.
    """
    n, nbytes = hashes.shape
    hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
    if hasattr(np, "bitwise_count") and nbytes % 8 == 0:
        # numpy >= 2: XOR 64-bit words and count bits natively (~5x faster than the table).
        words, itemsize = hashes.view(np.uint64), 8

        def distances(a: int, b: int) -> np.ndarray:
            return np.bitwise_count(words[a:b, None, :] ^ words[None, a:, :]).sum(axis=-1, dtype=np.int32)
    else:
        words, itemsize = hashes, 1

        def distances(a: int, b: int) -> np.ndarray:
            return _POPCOUNT[hashes[a:b, None, :] ^ hashes[None, a:, :]].sum(axis=-1, dtype=np.int32)

    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    out_d: list[np.ndarray] = []
    step = max(1, block_bytes // max(1, n * words.shape[1] * itemsize * 2))
    for a in range(0, n, step):
        b = min(n, a + step)
        # Rows a..b against columns a..n: the upper triangle, block by block.
        dist = distances(a, b)
        ii, jj = np.nonzero(dist <= max_distance)
        keep = jj > ii
        ii, jj = ii[keep], jj[keep]
        out_i.append(ii + a)
        out_j.append(jj + a)
        out_d.append(dist[ii, jj])
    if not out_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(np.int32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def check_leakage(
    index: DatasetIndex,
    assignment: Mapping[str, Any],
    *,
    near_duplicates: bool | Literal["auto"] = "auto",
    hash_size: int = 8,
    max_distance: int = 4,
    crop: float = 0.6,
    hash_cache: MutableMapping[tuple[str, int, float], np.ndarray] | None = None,
) -> LeakageReport:
    """Check an assignment (image id -> split or fold) for lesion/patient and near-duplicate leaks.

    ``near_duplicates="auto"`` hashes images only when some record lacks a lesion id (with lesion
    ids everywhere, check 1 is exact). ``hash_cache`` can be shared between calls (e.g. the folds
    of a k-fold) so each image is decoded and hashed once.
    """
    if hash_size < 2:
        raise ValueError(f"hash_size must be >= 2, got {hash_size}")
    if not 0 < crop <= 1:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    records = [r for r in index.records if r.image_id in assignment]
    unassigned = len(index.records) - len(records)

    # 1. groups in more than one split
    by_group: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_group[r.group][_split_name(assignment[r.image_id])].append(r.image_id)
    crossings = [
        GroupCrossing(g, {s: sorted(ids) for s, ids in sorted(splits.items())})
        for g, splits in sorted(by_group.items())
        if len(splits) > 1
    ]
    report = LeakageReport(
        n_images=len(records),
        n_groups=len(by_group),
        group_noun=_group_noun(records),
        crossings=crossings,
        unassigned=unassigned,
    )

    # 2. near-duplicates across splits
    if near_duplicates == "auto":
        run = any(not r.lesion_id for r in records)
        report.not_run_reason = "every image has a lesion id"
    else:
        run = bool(near_duplicates)
        report.not_run_reason = "not requested"
    if not run:
        return report
    report.not_run_reason = ""
    report.near_duplicates_checked = True
    report.hash_method = f"phash-{hash_size}" + (f" of the central {round(crop * 100)}%" if crop < 1 else "")
    report.max_distance = max_distance
    cache: MutableMapping[tuple[str, int, float], np.ndarray] = hash_cache if hash_cache is not None else {}
    hashed: list[Record] = []
    rows: list[np.ndarray] = []
    for k, r in enumerate(records):
        key = (r.ref, hash_size, crop)
        h = cache.get(key)
        if h is None:
            try:
                h = perceptual_hash(r.ref, hash_size=hash_size, crop=crop)
            except ImageError as exc:
                report.skipped.append(Skipped(r.image_id, str(exc)))
                continue
            cache[key] = h
        hashed.append(r)
        rows.append(h)
        if (k + 1) % 1000 == 0:
            log.info("hashed %d / %d images", k + 1, len(records))
    report.n_hashed = len(hashed)
    if len(hashed) < 2:
        return report
    ii, jj, dd = hamming_pairs(np.stack(rows), max_distance)
    split_of = np.array([_split_name(assignment[r.image_id]) for r in hashed], dtype=object)
    group_of = np.array([r.group for r in hashed], dtype=object)
    # Pairs in one split do not leak; pairs of one group are already reported by check 1.
    keep = (split_of[ii] != split_of[jj]) & (group_of[ii] != group_of[jj])
    order = np.lexsort((jj[keep], ii[keep], dd[keep]))
    for i, j, d in zip(ii[keep][order], jj[keep][order], dd[keep][order]):
        a, b = hashed[int(i)], hashed[int(j)]
        report.near_duplicates.append(NearDuplicate(a.image_id, b.image_id, split_of[i], split_of[j], int(d)))
    return report
