"""One runtime for every artifact format: ``load(path)`` → a ``Predictor``.

The formats table (``edgederm.formats.table``) says which suffixes each format has, the extra it
needs, and where its runtime and card reader live. The gate, the bench, ``edgederm predict`` and
``edgederm evaluate`` all go through here, so every format is preprocessed by the same
``PreprocessSpec`` code path.
"""

from __future__ import annotations

from .base import Predictor
from .registry import BACKENDS, Backend, backend_for, load, read_embedded_card, register_backend

__all__ = ["BACKENDS", "Backend", "Predictor", "backend_for", "load", "read_embedded_card", "register_backend"]
