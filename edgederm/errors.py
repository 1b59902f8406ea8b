"""User-facing errors.

Every error a user can cause (bad path, corrupt image, class-list mismatch, missing extra) is an
``EdgedermError``: the CLI prints its message as one line and exits with ``exit_code`` instead of
showing a traceback. Library callers can catch it like any exception.
"""

from __future__ import annotations

import re


class EdgedermError(Exception):
    """An error with a one-line, actionable message for the user."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class DataError(EdgedermError):
    """A data set, CSV or image cannot be read as described."""


class ImageError(DataError):
    """One image cannot be decoded (corrupt, truncated, empty, too large, unsupported)."""


class ClassMismatchError(EdgedermError):
    """The class list of an artifact card does not match the data it is used with."""


class CardError(EdgedermError):
    """An artifact card is missing, malformed, or of an unsupported schema version."""


class IntegrityError(EdgedermError):
    """An artifact's bytes differ from the SHA-256 its sidecar card recorded at export."""


class MissingExtraError(EdgedermError):
    """An optional dependency group is not installed."""

    def __init__(self, extra: str, package: str, purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"'{package}' is not installed{what}: pip install 'edgederm[{extra}]'"
        )
        self.extra = extra
        self.package = package


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
