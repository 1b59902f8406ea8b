"""``edgederm predict`` on real files: inputs, streamed formats, the official ISIC scorer, resume
after a real Ctrl-C, progress, and the input-sanity warnings."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgederm.data.sanity import input_warnings
from edgederm.data.taxonomy import ISIC2019_8, isic2018_matrix
from edgederm.errors import DataError, EdgedermError
from edgederm.predict import expand_inputs
from helpers import HAM7, natural_images, tiny_checkpoint
from helpers import run_cli as run

REPO = Path(__file__).resolve().parents[1]
ISIC_HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("predict") / "m.pt")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """imgs/{a,b/c}/*.jpg plus things a folder walk must skip."""
    root = tmp_path / "imgs"
    (root / "b" / "c").mkdir(parents=True)
    (root / ".hidden").mkdir()
    ims = natural_images(5)
    ims[0].save(root / "z1.jpg")
    ims[1].save(root / "a2.png")
    ims[2].save(root / "b" / "m3.jpeg")
    ims[3].save(root / "b" / "c" / "k4.JPG")
    ims[4].save(root / ".hidden" / "h5.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- inputs ---------------------------------------------------------------------------------------
def test_folders_and_globs_expand_sorted_once(folder: Path) -> None:
    got = expand_inputs([folder])
    assert [p.relative_to(folder).as_posix() for p in got] == ["a2.png", "b/c/k4.JPG", "b/m3.jpeg", "z1.jpg"]
    # A recursive glob, the same file again by name, and a folder: each file once, first spelling kept.
    got = expand_inputs([str(folder / "**" / "*.jp*g"), folder / "a2.png", folder])
    assert [p.name for p in got] == ["m3.jpeg", "z1.jpg", "a2.png", "k4.JPG"]
    with pytest.raises(EdgedermError, match="matches no image"):
        expand_inputs([str(folder / "*.bmp")])
    (folder / "empty").mkdir()
    with pytest.raises(EdgedermError, match="holds no images"):
        expand_inputs([folder / "empty"])


# -- formats --------------------------------------------------------------------------------------
def test_jsonl_csv_isic_outputs(capsys: pytest.CaptureFixture[str], ckpt: Path, folder: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "predict", ckpt, folder, "--out", tmp_path / "p.jsonl")  # format from the suffix
    assert code == 0 and "wrote 4 results" in err
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["a2.png", "k4.JPG", "m3.jpeg", "z1.jpg"]
    for r in rows:
        assert list(r["probabilities"]) == HAM7 and abs(sum(r["probabilities"].values()) - 1) < 1e-6
        assert r["decision"] == max(r["probabilities"], key=r["probabilities"].get)  # tiny card: argmax
        assert r["warnings"] == []

    code, _, _ = run(capsys, "predict", ckpt, folder, "--format", "csv", "--out", tmp_path / "p.csv", "--batch-size", "3")
    with open(tmp_path / "p.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert code == 0 and [Path(r["image"]).name for r in table] == [Path(r["image"]).name for r in rows]
    for r, j in zip(table, rows):  # same numbers, batch size 3 vs 16
        assert r["decision"] == j["decision"]
        assert np.allclose([float(r[c]) for c in HAM7], list(j["probabilities"].values()), atol=1e-6)

    code, out, _ = run(capsys, "predict", ckpt, folder, "--format", "isic", "--workers", "0")  # to stdout
    lines = out.splitlines()
    assert code == 0 and lines[0] == ISIC_HEADER
    assert [line.split(",")[0] for line in lines[1:]] == ["a2", "k4", "m3", "z1"]
    for line, j in zip(lines[1:], rows):
        assert np.allclose([float(v) for v in line.split(",")[1:]], list(j["probabilities"].values()), atol=1e-6)


def test_isic_mapping_and_refusals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # ISIC 2019's AK and SCC both become AKIEC (summed); the rest keep their column.
    m = isic2018_matrix(list(ISIC2019_8.classes), "isic2019_8")
    probs = np.array([[0.1, 0.2, 0.05, 0.15, 0.1, 0.1, 0.1, 0.2]])
    assert np.allclose(probs @ m, [[0.1, 0.2, 0.05, 0.35, 0.1, 0.1, 0.1]])
    with pytest.raises(DataError, match="UNK"):
        isic2018_matrix(list(ISIC2019_8.classes) + ["UNK"])
    binary = tiny_checkpoint(tmp_path / "b.pt", classes=["benign", "malignant"])
    img = tmp_path / "x.jpg"
    natural_images(1)[0].save(img)
    code, _, err = run(capsys, "predict", binary, img, "--format", "isic")
    assert code == 2 and "ISIC 2018" in _error_line(err)
    # Two files with one ISIC id (ISIC 2019's _downsampled quirk) cannot both be rows.
    ham = tiny_checkpoint(tmp_path / "h.pt")
    natural_images(1)[0].save(tmp_path / "ISIC_0000001.jpg")
    natural_images(1)[0].save(tmp_path / "ISIC_0000001_downsampled.jpg")
    code, _, err = run(capsys, "predict", ham, str(tmp_path / "ISIC_*.jpg"), "--format", "isic")
    assert code == 2 and "ISIC_0000001" in _error_line(err)


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:.*inplace:DeprecationWarning", "ignore:.*verify_integrity:DeprecationWarning")
def test_isic_output_accepted_by_the_official_scorer(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                     ckpt: Path, data_root: Path, tmp_path: Path) -> None:
    """The submission file of real HAM10000 images is scored by ``isic-challenge-scoring``; its
    balanced accuracy equals ours (edgederm.metrics on the jsonl decisions)."""
    pytest.importorskip("isic_challenge_scoring", reason="the official scorer: pip install 'edgederm[dev]'")
    import pandas as pd
    from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore

    if not hasattr(pd.DataFrame, "applymap"):
        # pandas 3 removed DataFrame.applymap (renamed map in 2.1); the scorer still calls it.
        monkeypatch.setattr(pd.DataFrame, "applymap", pd.DataFrame.map, raising=False)
    ham = data_root / "ham10000"
    meta = pd.read_csv(ham / "HAM10000_metadata.csv")
    picked = meta.groupby("dx").head(4).sort_values("image_id")  # 4 images of each of the 7 classes
    files = [ham / "HAM10000_images_part_1" / f"{i}.jpg" for i in picked.image_id]
    truth = tmp_path / "truth.csv"
    with open(truth, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ISIC_HEADER.split(","))
        for i, dx in zip(picked.image_id, picked.dx):
            w.writerow([i] + [1.0 if c == dx.upper() else 0.0 for c in HAM7])

    sub, jl = tmp_path / "preds.csv", tmp_path / "preds.jsonl"
    assert run(capsys, "predict", ckpt, *files, "--format", "isic", "--out", sub)[0] == 0
    assert run(capsys, "predict", ckpt, *files, "--out", jl)[0] == 0
    score = ClassificationScore.from_file(truth, sub, ClassificationMetric.BALANCED_ACCURACY)

    from edgederm.metrics import classification_report

    rows = [json.loads(line) for line in jl.read_text().splitlines()]
    label = dict(zip(picked.image_id, picked.dx.str.upper()))
    y_true = [HAM7.index(label[Path(r["image"]).stem]) for r in rows]
    probs = np.array([list(r["probabilities"].values()) for r in rows])
    ours = classification_report(y_true, probs, HAM7, y_pred=[HAM7.index(r["decision"]) for r in rows])
    assert ours["top1_ties"] == 0
    assert score.overall == pytest.approx(ours["bacc"], abs=1e-12)


# -- interruption and resume -------------------------------------------------------------------------
def _edgederm(*args: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # A background shell starts children with SIGINT ignored; restore the default so Ctrl-C
    # (SIGINT to the process) behaves as at a terminal.
    return subprocess.Popen(
        [sys.executable, "-m", "edgederm", *map(str, args)], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.realdata
def test_resume_after_ctrl_c(ckpt: Path, data_root: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"  # 300 real images: long enough to interrupt, short to finish
    images.mkdir()
    for src in sorted((data_root / "ham10000" / "HAM10000_images_part_1").glob("*.jpg"))[:300]:
        (images / src.name).symlink_to(src)
    n = 300
    out = tmp_path / "preds.csv"
    proc = _edgederm("predict", ckpt, images, "--format", "isic", "--out", out, "--batch-size", "8", "--workers", "1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") > 8:  # header + at least one batch
            break
        time.sleep(0.02)
    assert proc.poll() is None, "finished (or died) before it could be interrupted: " + proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    said = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert "Traceback" not in err and len(said) == 1 and "--resume finishes it" in said[0], err  # one line
    text = out.read_text()
    assert text.endswith("\n") and text.startswith(ISIC_HEADER + "\n")
    first = text.count("\n") - 1
    assert 8 <= first < n
    # A kill mid-write leaves half a line: --resume cuts it off and redoes that image.
    with open(out, "a") as f:
        f.write("ISIC_9999999,0.1,0.2")

    proc = _edgederm("predict", ckpt, images, "--format", "isic", "--out", out, "--resume", "--no-progress")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "partial last line" in err and f"({first} from before)" in err
    lines = out.read_text().splitlines()
    assert lines[0] == ISIC_HEADER and lines.count(ISIC_HEADER) == 1
    ids = [line.split(",")[0] for line in lines[1:]]
    assert sorted(ids) == sorted(p.stem for p in images.glob("*.jpg")) and len(ids) == n  # each exactly once


def test_resume_refusals(capsys: pytest.CaptureFixture[str], ckpt: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    code, _, err = run(capsys, "predict", ckpt, folder, "--format", "isic", "--resume")
    assert code == 2 and "--out" in _error_line(err)
    assert run(capsys, "predict", ckpt, folder, "--format", "csv", "--out", out)[0] == 0
    code, _, err = run(capsys, "predict", ckpt, folder, "--format", "csv", "--out", out)
    assert code == 2 and "--resume" in _error_line(err)  # never overwrites finished work
    code, _, err = run(capsys, "predict", ckpt, folder, "--format", "isic", "--out", out, "--resume")
    assert code == 2 and "header" in _error_line(err)  # other columns would corrupt the file
    code, _, err = run(capsys, "predict", ckpt, folder, "--format", "csv", "--out", out, "--resume")
    assert code == 0 and "wrote 0 results" in err and "(4 from before)" in err


# -- progress ---------------------------------------------------------------------------------------
def test_progress_bar_when_forced(capsys: pytest.CaptureFixture[str], ckpt: Path, folder: Path) -> None:
    code, out, err = run(capsys, "predict", ckpt, folder, "--format", "jsonl", "--progress")
    assert code == 0 and "predict m.pt: 4/4" in err and "img/s" in err
    assert "img/s" not in out and len(out.splitlines()) == 4  # results only on stdout
    code, _, err = run(capsys, "predict", ckpt, folder, "--format", "jsonl")  # not a TTY, 4 images: no bar
    assert code == 0 and "img/s" not in err


# -- input sanity -----------------------------------------------------------------------------------
@pytest.mark.realdata
def test_sanity_warnings_recorded(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, ckpt: Path,
                                  data_root: Path, tmp_path: Path) -> None:
    real = sorted((data_root / "ham10000" / "HAM10000_images_part_1").glob("*.jpg"))[0]
    rgb = Image.open(real).convert("RGB")
    rgb.save(tmp_path / "real.png")
    rgb.convert("L").save(tmp_path / "gray.jpg", quality=90)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)  # half-transparent: the decoder composites it on black
    rgba.save(tmp_path / "alpha.png")
    rgb.convert("RGBA").save(tmp_path / "opaque.png")  # an all-opaque alpha is not a problem
    rgb.resize((24, 18)).save(tmp_path / "tiny.png")  # the tiny model's input is 32 px
    code, out, err = run(capsys, "predict", ckpt, tmp_path, "--format", "jsonl", "--workers", "2")
    assert code == 0
    warned = {Path(r["image"]).stem: r["warnings"] for r in map(json.loads, out.splitlines())}
    assert warned["real"] == [] and warned["opaque"] == []
    assert len(warned["gray"]) == 1 and "grayscale" in warned["gray"][0]
    assert len(warned["alpha"]) == 1 and "100% of pixels are (partly) transparent" in warned["alpha"][0]
    assert any("tiny" in w for w in warned["tiny"])
    records = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for name in ("gray", "alpha", "tiny"):  # each warning logged once
        logged = [line for line in records if line.startswith(str(tmp_path / name))]
        assert len(logged) == len(warned[name]) and all(any(w in line for line in logged) for w in warned[name])
    assert "3 image(s) with input warnings" in err
    # The same image as colourless RGB (no header hint) is caught by its colour statistics.
    assert any("no colour" in w for w in input_warnings(None, rgb.convert("L").convert("RGB"), 32))


@pytest.mark.realdata
def test_sanity_has_no_false_positives_on_real_dermoscopy(data_root: Path) -> None:
    """Every 7th image of the shared real sets (~1,000 of HAM10000, ISIC 2019/2020, PH2)."""
    from edgederm.data.images import load_image

    files = sorted(p for p in data_root.rglob("*.jpg") if "lesion" not in p.name)[::7]
    assert len(files) > 900
    flagged = [(p.name, w) for p in files if (w := input_warnings(p, load_image(p, draft_size=448), 224))]
    assert flagged == []
