"""The results store: ``<out>/results.jsonl``, one JSON document per line, append-only.

A result is written the moment its configuration finishes, as one ``write`` of one complete line
on a file opened with ``O_APPEND`` and then ``fsync``-ed: a run that is interrupted (or whose
device drops) keeps every result finished before it, and nothing already written is ever
rewritten. A line cut short by a hard kill is skipped (with a warning) when reading.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import EdgedermError
from ..fsutil import json_default

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
SCHEMA = "edgederm.bench.result"
SCHEMA_VERSION = 1


class ResultsStore:
    """Append-only JSON-lines file of benchmark results."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / RESULTS_FILE

    def append(self, result: dict[str, Any]) -> None:
        """Append one result as one line (a single write, then fsync)."""
        doc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **result}
        line = (json.dumps(doc, default=json_default, allow_nan=False) + "\n").encode("utf-8")
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            view = memoryview(line)
            while view:  # a regular file takes it in one write; loop only for pathological short writes
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.read())

    def __len__(self) -> int:
        return len(self.read())

    def read(self) -> list[dict[str, Any]]:
        """Every complete result, oldest first."""
        if not self.path.exists():
            return []
        out: list[dict[str, Any]] = []
        with open(self.path, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s line %d is not a complete JSON document (an interrupted write?); skipped", self.path, no)
                    continue
                if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                    log.warning("%s line %d is not a bench result; skipped", self.path, no)
                    continue
                if int(doc.get("schema_version", 0)) > SCHEMA_VERSION:
                    raise EdgedermError(f"{self.path} line {no}: result schema {doc['schema_version']} is newer than this edgederm; upgrade")
                out.append(doc)
        return out


def is_bench_folder(path: str | Path) -> bool:
    """True for a folder that holds a bench results store (``edgederm report`` can dispatch on it)."""
    return (Path(path) / RESULTS_FILE).is_file()
