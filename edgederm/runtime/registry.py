"""The runtime loader: ``load(path)`` opens an artifact of any format in the formats table.

``BACKENDS`` holds one ``Backend`` per row of ``edgederm.formats.table``: how to open the format,
how to read and embed its card, which extra it needs. The format modules are imported when an
artifact of that format is first opened, so importing the runtime imports no toolkit.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import EdgedermError, MissingExtraError, short_reason
from ..formats.table import FORMATS, Format, artifact_suffixes, load_attr

if TYPE_CHECKING:
    from ..card import ArtifactCard
    from .base import Predictor

__all__ = ["BACKENDS", "Backend", "backend_for", "load", "read_embedded_card", "register_backend", "short_reason"]


@dataclass(frozen=True)
class Backend:
    name: str
    suffixes: tuple[str, ...]
    open: Callable[..., "Predictor"]
    read_card: Callable[[Path], "ArtifactCard | None"]
    embed_card: Callable[[Path, "ArtifactCard"], None] | None = None
    extra: str | None = None  # pip extra that provides the runtime
    module: str | None = None  # importable module that must be present
    # open() takes batch=N and compiles for that batch (the bench passes the batch it times).
    batch_option: bool = False

    def check_available(self) -> None:
        if self.module and importlib.util.find_spec(self.module) is None:
            raise MissingExtraError(self.extra or self.name, self.module, f"{self.name} artifacts")

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


def backend_from_format(fmt: Format) -> Backend:
    """A ``Backend`` whose functions import the format's modules on first call."""

    def open_(path: Path, card: "ArtifactCard", **options: Any) -> "Predictor":
        return load_attr(fmt.runtime)(path, card, **options)

    def read_card(path: Path) -> "ArtifactCard | None":
        from ..card import read_embedded_card

        return read_embedded_card(path)

    def embed_card(path: Path, card: "ArtifactCard") -> None:
        load_attr(fmt.metadata + ":write_card_text")(Path(path), card.to_json())

    return Backend(
        name=fmt.name, suffixes=fmt.suffixes, open=open_, read_card=read_card,
        embed_card=embed_card if fmt.metadata is not None else None,
        extra=fmt.extra, module=fmt.module, batch_option=fmt.batch_option,
    )


BACKENDS: dict[str, Backend] = {name: backend_from_format(fmt) for name, fmt in FORMATS.items()}


def register_backend(backend: Backend) -> Backend:
    """Add a backend in code (a plugin); formats of the table are registered already."""
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    BACKENDS[backend.name] = backend
    return backend


def _sync() -> None:
    # A format registered in the table after import (a plugin row) gets its backend.
    for name, fmt in FORMATS.items():
        if name not in BACKENDS:
            BACKENDS[name] = backend_from_format(fmt)


def backend_for(path: str | Path, name: str | None = None) -> Backend:
    _sync()
    if name is not None:
        if name not in BACKENDS:
            close = difflib.get_close_matches(name, BACKENDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise EdgedermError(f"unknown backend {name!r}{hint}; known: {', '.join(BACKENDS)}")
        return BACKENDS[name]
    p = str(path).lower()
    for backend in BACKENDS.values():
        if any(p.endswith(s) for s in backend.suffixes):
            return backend
    raise EdgedermError(f"{path}: unknown artifact format (known suffixes: {', '.join(artifact_suffixes())})")


def read_embedded_card(path: str | Path) -> "ArtifactCard | None":
    from ..card import read_embedded_card as read

    return read(path)


def load(path: str | Path, *, backend: str | None = None, **options: Any) -> "Predictor":
    """Open an artifact of any registered format as a ``Predictor``.

    The card is the embedded one (else the sidecar); ``options`` go to the backend (e.g.
    ``threads=2``, ``device="cuda"``). Refused with a one-line error: a file that differs from
    the SHA-256 its sidecar recorded, an embedded card and sidecar that disagree on what
    determines predictions, a decision naming an unknown class or a threshold outside (0, 1).
    """
    from ..card import check_runnable, load_card

    p = Path(path)
    if not p.exists():
        raise EdgedermError(f"artifact not found: {p}")
    be = backend_for(p, backend)
    be.check_available()
    card = load_card(p)  # verifies the file against its sidecar's SHA-256, embedded vs sidecar
    if card.task != "classification":
        # A segmentation checkpoint maps images to masks, not probabilities: say so instead of
        # failing later on an unknown architecture name.
        raise EdgedermError(
            f"{p}: a {card.task} artifact; the runtime loads classifiers "
            f"(use edgederm.seg.apply.LesionSegmenter or `edgederm segment` for masks)"
        )
    check_runnable(card, source=str(p))
    return be.open(p, card, **options)
