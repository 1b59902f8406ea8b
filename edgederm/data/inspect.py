"""Summaries of a ``DatasetIndex``: what a user should check before training on it.

``inspect_dataset`` counts classes, lesions and patients (the units that must not cross splits),
reads image sizes from file headers (PIL opens lazily, so no pixel data is decoded; arrays in
``.npz`` files are sized from their ``.npy`` headers) and groups what the reader skipped by reason.
``format_inspection`` renders the result as plain text for the CLI.
"""

from __future__ import annotations

import logging
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from edgederm.data.images import image_size
from edgederm.data.records import DatasetIndex, Record
from edgederm.data.taxonomy import TAXONOMIES
from edgederm.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["inspect_dataset", "format_inspection"]

_NPZ_REF = re.compile(r"^(?P<path>.+)::(?P<key>[^\[\]]+)\[(?P<index>\d+)\]$")


def _group_stats(ids: list[str]) -> dict[str, Any]:
    per = Counter(ids)
    sizes = list(per.values())
    return {
        "count": len(per),
        "images_with_id": len(ids),
        "images_per_group_mean": round(statistics.fmean(sizes), 3) if sizes else 0.0,
        "images_per_group_max": max(sizes) if sizes else 0,
        "groups_with_several_images": sum(1 for s in sizes if s > 1),
    }


class _SizeReader:
    """Image (width, height) from headers; caches ``.npz`` array shapes per file and key."""

    def __init__(self) -> None:
        self._npz_shapes: dict[tuple[str, str], tuple[int, ...]] = {}

    def __call__(self, ref: str) -> tuple[int, int]:
        m = _NPZ_REF.match(ref)
        if m:
            from edgederm.data.readers import npz_array_shape

            key = (m["path"], m["key"])
            if key not in self._npz_shapes:
                self._npz_shapes[key] = npz_array_shape(m["path"], m["key"])
            shape = self._npz_shapes[key]
            if len(shape) < 3 or int(m["index"]) >= shape[0]:
                raise DataError(f"{ref}: index out of range for an array of shape {shape}")
            return int(shape[2]), int(shape[1])  # (N, H, W[, C])
        # The one header reader (EXIF orientation applied, one-line ImageError).
        return image_size(ref)


def _spread(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _sample(records: list[Record], max_images: int | None) -> list[Record]:
    n = len(records)
    if max_images is None or max_images >= n:
        return records
    if max_images <= 0:
        return []
    # evenly spaced, so a class-sorted index is still sampled across classes
    return [records[(i * n) // max_images] for i in range(max_images)]


def inspect_dataset(index: DatasetIndex, max_images: int | None = None) -> dict[str, Any]:
    """A JSON-serialisable summary of ``index``.

    ``max_images`` bounds how many image headers are read for the size statistics (an evenly
    spaced sample); ``None`` reads all of them, ``0`` none.
    """
    records = index.records
    counts = index.class_counts()
    n = len(records)
    result: dict[str, Any] = {
        "name": index.name,
        "root": index.root,
        "taxonomy": index.taxonomy,
        "images": n,
        "classes": list(index.classes),
        "class_counts": counts,
        "empty_classes": [c for c, k in counts.items() if k == 0],
    }
    nonzero = [k for k in counts.values() if k]
    result["imbalance_ratio"] = round(max(nonzero) / min(nonzero), 2) if nonzero else None
    tax = TAXONOMIES.get(index.taxonomy)
    if tax is not None and set(index.classes) == set(tax.classes):
        result["malignant"] = sum(counts[c] for c in tax.malignant)

    lesions = [r.lesion_id for r in records if r.lesion_id]
    result["lesions"] = _group_stats(lesions) if lesions else None
    patients = [r.patient_id for r in records if r.patient_id]
    result["patients"] = _group_stats(patients) if patients else None
    result["masks"] = sum(1 for r in records if r.mask_ref)

    sample = _sample(records, max_images)
    read_size = _SizeReader()
    widths: list[int] = []
    heights: list[int] = []
    unreadable: list[str] = []
    for r in sample:
        try:
            w, h = read_size(r.ref)
        except Exception as e:  # noqa: BLE001 - a corrupt image is reported, not fatal, here
            log.debug("cannot read the size of %s: %s", r.ref, e)
            unreadable.append(r.image_id)
            continue
        widths.append(w)
        heights.append(h)
    result["image_sizes"] = {
        "read": len(widths),
        "sampled": len(sample),
        "unreadable": len(unreadable),
        "unreadable_examples": unreadable[:5],
        "width": _spread(widths) if widths else None,
        "height": _spread(heights) if heights else None,
    }

    reasons = Counter(s.reason for s in index.skipped)
    result["skipped"] = {
        "count": len(index.skipped),
        "by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    return result


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def format_inspection(result: dict[str, Any]) -> str:
    """``inspect_dataset``'s result as a plain-text report."""
    tax = f"  (taxonomy {result['taxonomy']})" if result["taxonomy"] else ""
    lines = [
        f"dataset   {result['name']}{tax}",
        f"root      {result['root']}",
        f"images    {result['images']}",
    ]
    for key, what in (("lesions", "lesions"), ("patients", "patients")):
        g = result.get(key)
        if g:
            lines.append(
                f"{what:<9} {g['count']} ({g['images_with_id']} images with an id; images per "
                f"{what[:-1]}: mean {g['images_per_group_mean']:.2f}, "
                f"max {g['images_per_group_max']})"
            )
        else:
            lines.append(f"{what:<9} none recorded")
    if result.get("masks"):
        lines.append(f"masks     {result['masks']}")

    total = result["images"] or 1
    show_malignant = "malignant" in result and "malignant" not in result["classes"]
    extra = ["class"] + (["malignant (all)"] if show_malignant else [])
    width = max(len(c) for c in extra + list(result["classes"]))
    lines += ["", f"{'class':<{width}}  {'images':>7}  {'share':>6}"]
    for c, k in result["class_counts"].items():
        lines.append(f"{c:<{width}}  {k:>7}  {100 * k / total:>5.1f}%")
    if show_malignant:
        k = result["malignant"]
        lines.append(f"{'malignant (all)':<{width}}  {k:>7}  {100 * k / total:>5.1f}%")
    if result["empty_classes"]:
        lines.append(f"no images for: {', '.join(result['empty_classes'])}")
    if result.get("imbalance_ratio"):
        lines.append(f"largest / smallest non-empty class: {result['imbalance_ratio']}")

    sizes = result["image_sizes"]
    lines.append("")
    if sizes["width"]:
        w, h = sizes["width"], sizes["height"]
        lines.append(f"image size, px ({sizes['read']} of {sizes['sampled']} sampled read)")
        lines.append(f"  {'':<8}{'min':>7}{'median':>8}{'max':>7}")
        for label, s in (("width", w), ("height", h)):
            lo, mid, hi = (_fmt_num(s[k]) for k in ("min", "median", "max"))
            lines.append(f"  {label:<8}{lo:>7}{mid:>8}{hi:>7}")
    else:
        lines.append(f"image size: none read ({sizes['sampled']} sampled)")
    if sizes["unreadable"]:
        examples = ", ".join(sizes["unreadable_examples"])
        lines.append(f"unreadable images: {sizes['unreadable']} (e.g. {examples})")

    sk = result["skipped"]
    lines.append("")
    lines.append(f"skipped   {sk['count']}")
    for reason, k in sk["by_reason"].items():
        lines.append(f"  {k:>7}  {reason}")
    return "\n".join(lines)
