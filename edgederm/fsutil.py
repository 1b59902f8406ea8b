"""Atomic file writes and hashing.

Nothing edgederm writes (checkpoints, split files, cards, exported artifacts) may be left half
written by an interruption: writes go to a temporary file in the same folder and are moved into
place with ``os.replace``, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name is chosen before the file exists (not tempfile.mkstemp): a Ctrl-C/SIGTERM raised
    # as an exception inside mkstemp, after it created the file, would leave a file whose name we
    # never learnt (seen: the signal lands right there when it follows an epoch's log line).
    tmp_path = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        yield tmp_path
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask).
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(o: Any) -> Any:
    """``json.dumps``' ``default=``: numpy scalars / arrays (they appear in metric dicts) and paths."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def jsonable(obj: Any, *, nonfinite_to_null: bool = False) -> Any:
    """``obj`` as plain JSON values: numpy scalars and arrays to Python, paths to strings, tuples to
    lists, unknown objects to their ``str``; ``nonfinite_to_null`` writes NaN/Inf as null (strict
    JSON) instead of Python's ``NaN`` extension."""
    import math

    if isinstance(obj, dict):
        return {str(k): jsonable(v, nonfinite_to_null=nonfinite_to_null) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, nonfinite_to_null=nonfinite_to_null) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays and scalars
        return jsonable(obj.tolist(), nonfinite_to_null=nonfinite_to_null)
    if isinstance(obj, float):
        return None if nonfinite_to_null and not math.isfinite(obj) else obj
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
