"""Where a result came from: package versions, the command that made it, the git commit.

One place for the facts every card, report and benchmark records about its own making.
``EDGEDERM_COMMAND`` carries the user's command line into the functions a command calls (the
CLI sets it once; library callers may set it; child processes inherit it).
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

COMMAND_ENV = "EDGEDERM_COMMAND"


def package_version(dist: str) -> str | None:
    """The installed version of a distribution (``onnxruntime``), or None when it is absent."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def record_command(argv: Sequence[str] | str | None = None) -> None:
    """Remember the command being run (default: ``edgederm`` + this process's arguments); the
    outermost command wins, so a stage run by ``edgederm run`` records ``edgederm run ...``."""
    if isinstance(argv, str):
        text = argv
    else:
        text = shlex.join(["edgederm", *(sys.argv[1:] if argv is None else argv)])
    os.environ.setdefault(COMMAND_ENV, text)


def command() -> str | None:
    """The command recorded by ``record_command`` (None outside one)."""
    return os.environ.get(COMMAND_ENV)


def git_sha() -> str | None:
    """The commit of the edgederm checkout in use, if it is one (for provenance)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
