"""The reader registry: ``register_reader``, detection, ``read_dataset``."""

from __future__ import annotations

import csv
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgederm.data.records import DatasetIndex
from edgederm.data.taxonomy import Taxonomy, get_taxonomy
from edgederm.errors import DataError

log = logging.getLogger(__name__)


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
