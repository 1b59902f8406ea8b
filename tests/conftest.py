"""Shared fixtures.

Real-data tests read the data sets from ``EDGEDERM_DATA`` (default: ``../shared/data`` next to the
repository) and skip with a reason when it is absent, so the suite runs anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    env = os.environ.get("EDGEDERM_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if root is None:
        pytest.skip("real data not found: set EDGEDERM_DATA to the shared data folder")
    return root


def real_data_set(root: Path, name: str) -> Path:
    path = root / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path
