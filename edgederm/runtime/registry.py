"""The backend table: suffix → how to open, how to read/embed the card, which extra it needs."""

from __future__ import annotations

import difflib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import EdgedermError, MissingExtraError

if TYPE_CHECKING:
    from ..card import ArtifactCard
    from .base import Predictor


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


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    BACKENDS[backend.name] = backend
    return backend


def backend_for(path: str | Path, name: str | None = None) -> Backend:
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
    known = ", ".join(s for b in BACKENDS.values() for s in b.suffixes)
    raise EdgedermError(f"{path}: unknown artifact format (known suffixes: {known})")


def short_reason(e: BaseException, limit: int = 160) -> str:
    """One informative line of a runtime's exception message (for one-line user errors).

    OpenVINO prefixes the reason with source locations ("Exception from src/...", "Check '...'
    failed at ..."); ONNX Runtime with "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model
    from PATH failed:". Both are dropped so the reason itself remains.
    """
    text = str(e).strip()
    m = re.match(r"\[ONNXRuntimeError\] : \d+ : (\w+) : (?:Load model from .*? failed:)?\s*(.*)", text, re.S)
    if m:
        text = f"{m.group(1)}: {m.group(2)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))]
    line = (useful or lines or [type(e).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_embedded_card(path: str | Path) -> "ArtifactCard | None":
    backend = backend_for(path)
    backend.check_available()
    return backend.read_card(Path(path))


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
