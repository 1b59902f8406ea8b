"""bench/gpu_check.sh is run by hand on a lent GPU; here it is checked the way CPU allows: shell
syntax, the recipe it trains (validated by the real recipe loader), and its dry run on real data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_gpu_check_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_recipe_is_the_ensemble_members_on_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgederm.train.config import load_recipe

    monkeypatch.setenv("EDGEDERM_DATA", str(tmp_path))
    check = load_recipe(ROOT / "bench" / "gpu-check.yaml")
    full = load_recipe(ROOT / "train" / "ham10000-ensemble.yaml")
    assert [m.model for m in check.members] == [m.model for m in full.members]
    assert (check.device, check.amp, check.channels_last) == ("cuda", "bf16", True)
    assert check.tta == full.tta and check.combine == full.combine
    assert all(m.epochs == 1 for m in check.members)


@pytest.mark.realdata
def test_gpu_check_dry_run_on_real_data(data_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "EDGEDERM_DATA": str(data_root), "PYTHON": sys.executable, "OUT": str(tmp_path)}
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "recipe ok: resnet50 x1 ep, densenet121 x1 ep, efficientnet_b3 x1 ep" in r.stdout
    # Without data it refuses with one line instead of training on nothing.
    env["EDGEDERM_DATA"] = str(tmp_path / "missing")
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no ISIC 2019 data" in r.stdout
