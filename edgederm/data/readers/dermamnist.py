"""DermaMNIST (MedMNIST ``.npz``)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from edgederm.data.records import DatasetIndex
from edgederm.data.taxonomy import Taxonomy, normalize_label
from edgederm.errors import DataError

from .common import (
    _abs,
    _Builder,
)
from .registry import register_reader


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
