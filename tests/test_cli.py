"""The command line on real data and on bad input: one-line errors, counts, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest


from helpers import HAM7, rgb_images, tiny_checkpoint
from helpers import run_cli as run



def _one_line_error(err: str) -> str:
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.realdata
def test_inspect_real_sets(capsys: pytest.CaptureFixture[str], data_root: Path) -> None:
    code, out, _ = run(capsys, "data", "inspect", data_root / "isic2019")
    assert code == 0 and "2567" in out.replace(",", "") and "lesions" in out and "median" in out
    code, out, _ = run(capsys, "data", "inspect", data_root / "ph2", "--json")
    assert code == 0 and json.loads(out)["images"] == 200


@pytest.mark.realdata
def test_split_and_check_leakage_on_ham(capsys: pytest.CaptureFixture[str], data_root: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.csv"
    code, out, _ = run(capsys, "data", "split", data_root / "ham10000", "--out", split)
    assert code == 0 and "0 lesions cross splits" in out
    code, out, _ = run(capsys, "data", "check-leakage", data_root / "ham10000", "--split", split)
    assert code == 0 and "0 lesions cross splits" in out
    # Move one image of a multi-image lesion to another split: the checker must fail (exit 1).
    lines = split.read_text().splitlines()
    header, rows = lines[:2], list(csv.reader(lines[2:]))
    groups: dict[str, list[list[str]]] = {}
    for r in rows:
        groups.setdefault(r[2], []).append(r)
    victim = next(g for g in groups.values() if len(g) > 1)
    victim[0][3] = "test" if victim[0][3] != "test" else "train"
    with open(split, "w", newline="") as f:
        f.write("\n".join(header) + "\n")
        csv.writer(f).writerows(rows)
    code, out, _ = run(capsys, "data", "check-leakage", data_root / "ham10000", "--split", split)
    assert code == 1 and victim[0][2].split(":", 1)[1] in out


def test_missing_path_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "data", "inspect", tmp_path / "nope")
    assert code == 2 and "nope" in _one_line_error(err)


def test_bad_reader_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "data", "inspect", tmp_path, "--opt", "oops")
    assert code == 2 and "key=value" in _one_line_error(err)


def test_predict_skips_corrupt_images_and_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    good = tmp_path / "good.jpg"
    rgb_images(1)[0].save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # truncated JPEG
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code, out, err = run(capsys, "predict", ckpt, good, bad, empty, "--json")
    assert code == 1
    rows = json.loads(out)
    assert [Path(r["image"]).name for r in rows] == ["good.jpg"]
    assert set(rows[0]["probabilities"]) == set(HAM7)
    assert "skipped 2 unreadable image(s)" in err and "Traceback" not in err


def test_evaluate_refuses_class_mismatch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    root = tmp_path / "folder"
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i, im in enumerate(rgb_images(2, seed=len(cls))):
            im.save(root / cls / f"{i}.png")
    code, _, err = run(capsys, "evaluate", ckpt, "--data", root, "--format", "imagefolder", "--taxonomy", "binary", "--n-boot", "10")
    line = _one_line_error(err)
    assert code == 2 and "class list mismatch" in line and "MEL" in line and "benign" in line


def test_card_show_and_validate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    code, out, _ = run(capsys, "card", "show", ckpt)
    assert code == 0 and json.loads(out)["classes"] == HAM7
    code, out, _ = run(capsys, "card", "validate", str(ckpt) + ".card.json")
    assert code == 0 and out.startswith("ok:")


def test_console_script_entry_point() -> None:
    """The installed `edgederm` command (not just the function) runs and lists the registries."""
    out = subprocess.run([sys.executable, "-m", "edgederm", "models"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "resnet50" in out.stdout and "efficientnet_lite0" in out.stdout


def test_root_logger_info_from_libraries_is_hidden_without_verbose() -> None:
    """ONNX Runtime's quantizer logs hundreds of INFO lines to the root logger; -v shows them."""
    import subprocess
    import sys

    code = ("import logging; from edgederm.cli import _setup_logging; _setup_logging({v}); "
            "logging.info('root-info'); logging.warning('root-warning'); logging.getLogger('edgederm.t').info('ours')")
    quiet = subprocess.run([sys.executable, "-c", code.format(v=False)], capture_output=True, text=True).stderr
    loud = subprocess.run([sys.executable, "-c", code.format(v=True)], capture_output=True, text=True).stderr
    assert "root-info" not in quiet and "root-warning" in quiet and "ours" in quiet
    assert "root-info" in loud
