"""Run reports: a realistic fake run folder (seeded predictions with lesion structure, a real tiny
checkpoint and card, metrics computed by edgederm.metrics from those predictions) → report.md and
figures; plus each figure function on edge cases."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgederm.decision import decide
from edgederm.errors import ClassMismatchError, EdgedermError
from edgederm.evaluate import EvalResult
from edgederm.metrics import bootstrap_ci, classification_report
from edgederm.thresholds import calibrate, clinical_report
from edgederm.report import (
    load_predictions,
    plot_confusion,
    plot_reliability,
    plot_roc,
    plot_training_curves,
    write_run_report,
)
from helpers import HAM7, tiny_checkpoint

THRESHOLDS = {"priority": ["MEL", "BCC"], "thresholds": {"MEL": 0.22, "BCC": 0.4}}
# Calibration targets giving each outcome of the fallback chain on the fake validation data:
# MEL meets its strict floors, BCC only the relaxed ones, AKIEC none (argmax).
CALIBRATION = {
    "targets": [{"class": "MEL", "min_sens": 0.9, "min_spec": 0.85},
                {"class": "BCC", "min_sens": 0.95, "min_spec": 0.95},
                {"class": "AKIEC", "min_sens": 1.0, "min_spec": 1.0}],
    "fallbacks": [{"name": "relaxed", "min_sens": 0.8, "min_spec": 0.75,
                   "per_class": {"AKIEC": {"min_sens": 1.0, "min_spec": 1.0}}}],
}
PLOTS = ["confusion_val", "confusion_test", "roc_val", "roc_test", "reliability_val",
         "reliability_test", "training_curves"]


# -- building a run folder ----------------------------------------------------------------------
def _predictions(rng: np.random.Generator, n_lesions: int, prefix: str) -> dict[str, np.ndarray]:
    """Lesions with 1-3 images each, imbalanced classes (NV common, DF/VASC rare), probabilities
    that carry signal with lesion-level and image-level noise."""
    C = len(HAM7)
    freq = np.array([0.15, 0.45, 0.1, 0.08, 0.12, 0.05, 0.05])
    lesion_cls = rng.choice(C, size=n_lesions, p=freq)
    lesion_cls[:C] = np.arange(C)  # every class present
    y, groups = [], []
    for i, c in enumerate(lesion_cls):
        k = int(rng.integers(1, 4))
        y += [c] * k
        groups += [f"lesion:{prefix}{i:04d}"] * k
    y = np.array(y)
    lesion_noise = {g: rng.normal(0, 1.0, C) for g in dict.fromkeys(groups)}  # ordered: reproducible
    logits = np.stack([lesion_noise[g] for g in groups]) + rng.normal(0, 0.8, (len(y), C))
    logits[np.arange(len(y)), y] += 2.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ids = np.array([f"{prefix}_{i:05d}" for i in range(len(y))])
    return {"y_true": y, "probs": probs, "groups": np.array(groups), "image_ids": ids}


def _summary(split: str, p: dict[str, np.ndarray], decision: dict[str, Any]) -> dict[str, Any]:
    y_pred = decide(p["probs"], HAM7, decision)
    report = classification_report(p["y_true"], p["probs"], HAM7, y_pred=y_pred)
    ci = bootstrap_ci(p["y_true"], p["probs"], HAM7, groups=p["groups"], y_pred=y_pred, n_boot=200, seed=0)
    return EvalResult(f"synthetic:{split}", list(HAM7), list(p["image_ids"]), list(p["groups"]), p["y_true"],
                      p["probs"], y_pred, report, ci, views=["identity", "hflip"]).summary()


def make_run(root: Path, *, calibration: dict[str, Any] | None = None, optional: bool = True,
             seed: int = 0) -> Path:
    """A run folder as the trainer writes it: with ``calibration``, thresholds calibrated on the
    validation predictions by edgederm.thresholds and the clinical report of both splits;
    ``optional=False`` leaves out every optional part."""
    rng = np.random.default_rng(seed)
    preds = {"val": _predictions(rng, 60, "V"), "test": _predictions(rng, 70, "T")}
    decision: dict[str, Any] = {"rule": "argmax"}
    if calibration:
        decision = calibrate(preds["val"]["y_true"], preds["val"]["probs"], HAM7, calibration).decision
    run = root / "fake-run"
    run.mkdir(parents=True)
    tiny_checkpoint(run / "model.pt", members=2)
    side = run / "model.pt.card.json"
    card = json.loads(side.read_text())
    card["name"] = "fake-run"
    card["decision"] = decision
    card["data"] = {"dataset": "synthetic", "fingerprint": "abcdef0123456789",
                    "counts": {"train": 700, "val": 0, "test": 0}, "skipped": 2, "split_sha256": "f" * 64}
    card["provenance"].update(git_sha="0123456789abcdef0123", command="edgederm train recipe.yaml")
    card["model"]["members"] = [
        {"name": "small_cnn", "val_bacc": 0.61, "best_epoch": 3, "weight": 0.52, "input_size": [32, 32]},
        {"name": "small_cnn", "val_bacc": 0.56, "best_epoch": 4, "weight": 0.48, "input_size": [24, 24]},
    ]
    metrics: dict[str, Any] = {s: _summary(s, p, decision) for s, p in preds.items()}
    metrics["train_seconds"] = 754.2
    if calibration:
        metrics["clinical"] = {s: clinical_report(p["y_true"], p["probs"], HAM7, decision, groups=p["groups"],
                                                  n_boot=200) for s, p in preds.items()}
    card["data"]["counts"].update(val=metrics["val"]["n"], test=metrics["test"]["n"])
    side.write_text(json.dumps(card))
    (run / "metrics.json").write_text(json.dumps(metrics))
    if optional:
        (run / "predictions").mkdir()
        for s, p in preds.items():
            np.savez(run / "predictions" / f"{s}.npz", y_true=p["y_true"], probs=p["probs"],
                     y_pred=decide(p["probs"], HAM7, decision), image_ids=p["image_ids"],
                     groups=p["groups"], classes=np.array(HAM7))
        history = {
            f"{slot}-small_cnn": [
                {"epoch": e, "loss": 2.0 / e + slot, "val_bacc": b, "seconds": 10.0 + slot,
                 "val_loss": 2.2 / e, "lr": 1e-3 * (1 - e / 6)}
                for e, b in enumerate(bs, start=1)
            ]
            for slot, bs in enumerate([[0.3, 0.5, 0.61, 0.6], [0.2, 0.4, 0.5, 0.56, 0.55]])
        }
        (run / "history.json").write_text(json.dumps(history))
        lines = ['# edgederm-split {"format": "edgederm-split", "version": 1}', "image_id,label,group,split"]
        for s, p in preds.items():
            lines += [f"{i},{HAM7[y]},{g},{s}" for i, y, g in zip(p["image_ids"], p["y_true"], p["groups"])]
        (run / "split.csv").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "thresholds": make_run(root / "t", calibration=CALIBRATION),
        "bare": make_run(root / "b", optional=False, seed=2),  # argmax, no optional parts
    }


@pytest.fixture
def run_copy(base_runs: dict[str, Path], tmp_path: Path):  # noqa: ANN201
    def copy(kind: str) -> Path:
        dst = tmp_path / kind
        shutil.copytree(base_runs[kind], dst)
        return dst

    return copy


# -- helpers ------------------------------------------------------------------------------------
def _ci(entry: dict[str, Any]) -> str:
    return f"{entry['value']:.3f} [{entry['lo']:.3f}–{entry['hi']:.3f}]"


def _row(text: str, first_cell: str, after: str = "") -> list[str]:
    """Cells of the first table row whose first cell is ``first_cell`` (after heading ``after``)."""
    start = text.index(after) if after else 0
    for line in text[start:].splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    raise AssertionError(f"no row {first_cell!r} after {after!r}")


def _verdict(met: bool | None, met_lo: bool | None) -> str:
    if met is None:
        return "n/a"
    return "**not met**" if not met else "met (not at CI lower bound)" if met_lo is False else "met"


def _check_png(path: Path) -> None:
    assert path.exists(), path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert 250 <= w <= 3000 and 250 <= h <= 3000, (path.name, im.size)
        # Not a blank canvas: text, lines and colour patches give many distinct colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


# -- the full report ----------------------------------------------------------------------------
def test_full_report_reads_the_numbers(run_copy) -> None:  # noqa: ANN001
    run = run_copy("thresholds")
    out = write_run_report(run)
    assert out == run / "report.md"
    text = out.read_text()
    metrics = json.loads((run / "metrics.json").read_text())

    for name in PLOTS:
        _check_png(run / "plots" / f"{name}.png")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(f"plots/{n}.png" for n in PLOTS)
    assert all((run / link).exists() for link in links)

    # Header: data set + fingerprint, split counts, time, version and sha from the card.
    assert "synthetic (fingerprint `abcdef0123456789`)" in text
    assert f"val {metrics['val']['n']} · test {metrics['test']['n']}" in text
    assert "12 min 34 s" in text
    assert "git `0123456789ab`" in text and "edgederm 0.1.0" in text

    # Metrics table: BACC and ECE with their CIs, from metrics.json, for both splits.
    bacc = _row(text, "BACC", "## Metrics")
    assert bacc[1:] == [_ci(metrics["val"]["ci"]["bacc"]), _ci(metrics["test"]["ci"]["bacc"])]
    ece = _row(text, "ECE (15 bins)", "## Metrics")
    assert ece[2] == _ci(metrics["test"]["ci"]["ece"])
    for label in ("accuracy", "macro F1", "macro AUC", "melanoma sensitivity", "malignant BACC"):
        _row(text, label, "## Metrics")

    # Per-class rows for every class, on test.
    m, ci = metrics["test"]["metrics"], metrics["test"]["ci"]
    for c in HAM7:
        row = _row(text, c, "## Per class (test)")
        assert row[1] == str(m["support"][c])
        assert row[2] == _ci(ci[f"sensitivity/{c}"])
        assert row[4] == (f"{m['precision'][c]:.3f}" if m["precision"][c] is not None else "n/a")
        assert row[6] == _ci(ci[f"auc/{c}"])

    # Thresholds: the calibration as the card records it, the clinical report's numbers per
    # split under the multi-class rule (with CIs), verdicts, the argmax comparison.
    decision = json.loads((run / "model.pt.card.json").read_text())["decision"]
    assert decision["fallback"] == {"MEL": "strict", "BCC": "relaxed", "AKIEC": "argmax"}
    assert "Fallback fired: **argmax**" in text
    section = text[text.index("## Clinical decision thresholds"):text.index("## Ensemble members")]
    for rank, cls in enumerate(["MEL", "BCC", "AKIEC"], start=1):
        row = _row(section, cls)
        floors = decision["targets"][cls]
        thr = f"{decision['thresholds'][cls]:.4f}" if cls in decision["thresholds"] else "— (argmax)"
        level = decision["fallback"][cls]
        if level == "relaxed":  # the floors it settled for
            used = decision["calibrated_on"]["achieved"][cls]
            level += f" (sens ≥ {used['min_sens']:.2f}, spec ≥ {used['min_spec']:.2f})"
        assert row[1:5] == [str(rank) if cls != "AKIEC" else "—", thr, level,
                            f"sens ≥ {floors['min_sens']:.2f}, spec ≥ {floors['min_spec']:.2f}"]
        for k, split in ((5, "val"), (8, "test")):
            t = metrics["clinical"][split]["targets"][cls]
            assert row[k:k + 2] == [_ci(t["sens"]), _ci(t["spec"])]
            assert row[k + 2] == _verdict(t["met"], t["met_at_lower_bound"])
        assert row[11] == f"{t['sens_argmax']:.3f} / {t['spec_argmax']:.3f}"
    b = metrics["clinical"]["test"]["bacc"]
    d = b["diff"]  # a signed difference: "to" between the bounds, never an en dash by a minus
    diff = f"{d['diff']:+.3f} [{d['lo']:+.3f} to {d['hi']:+.3f}]"
    assert f"test: {_ci(b['rule'])} with the rule vs {_ci(b['argmax'])} with argmax, difference {diff}" in section

    # Members: input size, val BACC, weight, best epoch, epochs and time from history.json.
    assert _row(text, "0", "## Ensemble members")[1:] == ["`small_cnn`", "32×32", "0.610", "0.520", "3", "4", "40.0 s"]
    assert _row(text, "1", "## Ensemble members")[1:] == ["`small_cnn`", "24×24", "0.560", "0.480", "4", "5", "55.0 s"]
    # Class × split table from split.csv.
    assert _row(text, "**all**", "## Data per class and split")[1:] == [
        f"{metrics['val']['n']} (60)", f"{metrics['test']['n']} (70)"]
    assert "Warning" not in text


def test_argmax_run_without_optional_parts(run_copy) -> None:  # noqa: ANN001
    run = run_copy("bare")
    text = write_run_report(run).read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert _row(text, "BACC")[1:] == [_ci(metrics["val"]["ci"]["bacc"]), _ci(metrics["test"]["ci"]["bacc"])]
    assert "Clinical decision thresholds" not in text and "fallback" not in text.lower()
    for absent in ("## Figures", "## Data per class", "## Seeds", "Grad-CAM", "![", "Warning"):
        assert absent not in text
    assert not (run / "plots").exists() or not any((run / "plots").iterdir())
    # Without history the members table still shows what the card knows.
    assert _row(text, "1", "## Ensemble members")[1:] == ["`small_cnn`", "24×24", "0.560", "0.480", "4", "n/a", "n/a"]


@pytest.mark.parametrize("missing", ["metrics.json", "model.pt.card.json"])
def test_missing_required_file_is_one_line_error(run_copy, missing: str) -> None:  # noqa: ANN001
    run = run_copy("bare")
    (run / missing).unlink()
    if missing.endswith("card.json"):
        (run / "model.pt").unlink()  # else the embedded card would be used
    with pytest.raises(EdgedermError, match=f"no {re.escape(missing)}") as info:
        write_run_report(run)
    assert "\n" not in str(info.value)
    assert not (run / "report.md").exists()


def test_embedded_card_used_without_sidecar(run_copy) -> None:  # noqa: ANN001
    run = run_copy("bare")
    (run / "model.pt.card.json").unlink()
    text = write_run_report(run / "model.pt").read_text()  # a model.pt path is accepted too
    assert text.startswith("# Training report: tiny")


def test_corrupt_metrics_is_one_line_error(run_copy) -> None:  # noqa: ANN001
    run = run_copy("bare")
    (run / "metrics.json").write_text('{"val": ')
    with pytest.raises(EdgedermError, match="metrics.json is not valid JSON"):
        write_run_report(run)
    (run / "metrics.json").write_text('{"train_seconds": 3}')
    with pytest.raises(EdgedermError, match="neither 'val' nor 'test'"):
        write_run_report(run)


def test_stale_predictions_are_flagged(run_copy) -> None:  # noqa: ANN001
    run = run_copy("thresholds")
    # Only the test predictions: fewer figures to draw.
    (run / "predictions" / "val.npz").unlink()
    (run / "history.json").unlink()
    path = run / "predictions" / "test.npz"
    z = dict(np.load(path))
    z["y_pred"] = z["probs"].argmax(axis=1)  # saved without the thresholds
    np.savez(path, **z)
    text = write_run_report(run).read_text()
    warning = text[text.index("Warning"): text.index("| | |")]
    assert "y_pred differs from the card's decision rule" in warning
    assert "predictions/test.npz gives BACC" in warning
    drawn = sorted(p.name for p in (run / "plots").iterdir())
    assert drawn == ["confusion_test.png", "reliability_test.png", "roc_test.png"]
    z["classes"] = np.array(HAM7[::-1])
    np.savez(path, **z)
    with pytest.raises(ClassMismatchError):
        write_run_report(run)


def test_thresholds_without_clinical_block(run_copy) -> None:  # noqa: ANN001
    """Without metrics["clinical"], the rule's numbers come from each split's bootstrap and the
    floors from the card; the verdicts are derived from them."""
    run = run_copy("thresholds")
    shutil.rmtree(run / "predictions")  # tables only: no figures to draw
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["clinical"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    decision = json.loads((run / "model.pt.card.json").read_text())["decision"]
    text = write_run_report(run).read_text()
    section = text[text.index("## Clinical decision thresholds"):text.index("## Ensemble members")]
    assert "with argmax" not in section  # only clinical_report gives the argmax comparison
    for cls in ("MEL", "BCC", "AKIEC"):
        row = _row(section, cls)
        assert len(row) == 11
        floors = decision["targets"][cls]
        for k, split in ((5, "val"), (8, "test")):
            sens, spec = (metrics[split]["ci"][f"{m}/{cls}"] for m in ("sensitivity", "specificity"))
            assert row[k:k + 2] == [_ci(sens), _ci(spec)]
            met = sens["value"] >= floors["min_sens"] and spec["value"] >= floors["min_spec"]
            met_lo = sens["lo"] >= floors["min_sens"] and spec["lo"] >= floors["min_spec"]
            assert row[k + 2] == _verdict(met, met_lo)
    # MEL met its strict floors on validation by construction (the calibration checked it).
    assert _row(section, "MEL")[7].startswith("met")


def test_argmax_fallback_everywhere_still_reported(run_copy) -> None:  # noqa: ANN001
    """A calibration where no class kept a threshold leaves an argmax rule: the report must say
    that the clinical targets were not reachable rather than hide the section."""
    run = run_copy("bare")
    side = run / "model.pt.card.json"
    card = json.loads(side.read_text())
    card["decision"] = {"rule": "argmax", "thresholds": {}, "priority": [], "fallback": {"MEL": "argmax"},
                        "fallback_fired": "argmax", "targets": {"MEL": {"min_sens": 0.99, "min_spec": 0.99}}}
    side.write_text(json.dumps(card))
    text = write_run_report(run).read_text()
    section = text[text.index("## Clinical decision thresholds"):text.index("## Ensemble members")]
    assert "Fallback fired: **argmax**" in section
    row = _row(section, "MEL")
    assert row[1:5] == ["—", "— (argmax)", "argmax", "sens ≥ 0.99, spec ≥ 0.99"]
    metrics = json.loads((run / "metrics.json").read_text())
    for k, split in ((7, "val"), (10, "test")):
        sens, spec = (metrics[split]["ci"][f"{m}/MEL"] for m in ("sensitivity", "specificity"))
        assert row[k] == _verdict(sens["value"] >= 0.99 and spec["value"] >= 0.99,
                                  sens["lo"] >= 0.99 and spec["lo"] >= 0.99)


def test_seeds_in_metrics_and_seeds_root(run_copy) -> None:  # noqa: ANN001
    run = run_copy("bare")
    metrics = json.loads((run / "metrics.json").read_text())
    seeds = [(0, 0.70, 0.66), (1, 0.74, 0.61), (2, 0.69, 0.64)]
    # The trainer's seeds.json shape (flat per-split dicts) and the summary shape both count.
    metrics["seeds"] = [{"seed": s, "run": f"runs/x/seed-{s}", "val": {"bacc": v, "macro_auc": None},
                         "test": {"bacc": t}} for s, v, t in seeds[:2]]
    metrics["seeds"].append({"seed": 2, "val": {"n": 9, "metrics": {"bacc": 0.69}},
                             "test": {"n": 9, "metrics": {"bacc": 0.64}, "ci": {}}})
    (run / "metrics.json").write_text(json.dumps(metrics))
    text = write_run_report(run).read_text()
    vals, tests = np.array([s[1] for s in seeds]), np.array([s[2] for s in seeds])
    row = _row(text, "BACC", "## Seeds")
    assert row[1] == f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f}"
    assert row[2] == f"{tests.mean():.3f} ± {tests.std(ddof=1):.3f}"
    assert row[3:] == [f"{t:.3f}" for t in tests]
    assert "| macro AUC" not in text[text.index("## Seeds"):]  # None is not a value

    # The root of a multi-seed run: seeds.json, one run folder per seed.
    root = run.parent / "multi"
    root.mkdir()
    shutil.copytree(run, root / "seed-0")
    (root / "seed-1").mkdir()
    (root / "seeds.json").write_text(json.dumps({"seeds": [0, 1], "runs": metrics["seeds"][:2]}))
    text = write_run_report(root).read_text()
    assert text.startswith("# Multi-seed report: multi")
    row = _row(text, "BACC")
    assert row[2] == f"{tests[:2].mean():.3f} ± {tests[:2].std(ddof=1):.3f}"
    assert "- seed 0: [seed-0](seed-0/report.md)" in text and "- seed 1: `seed-1`" in text


def test_gradcam_parts_are_linked(run_copy) -> None:  # noqa: ANN001
    run = run_copy("bare")
    Image.new("RGB", (300, 200), (200, 100, 50)).save(run / "gradcam.png")
    stat = lambda m: {"mean": m, "sd": 0.1, "lo": m - 0.05, "hi": m + 0.04, "n": 40, "level": 0.95}  # noqa: E731
    cam = {"dataset": "ph2", "n_images": 40, "explained": "decision", "level": 0.95, "members": [
        {"name": "small_cnn", "energy_in_mask": stat(0.734), "mask_area_fraction": stat(0.41),
         "excess_over_chance": stat(0.324), "ratio_to_chance": 1.79, "n_degenerate": 0}],
        "images": [{"image_id": "IMD002"}]}
    (run / "cam_in_mask.json").write_text(json.dumps(cam))
    text = write_run_report(run).read_text()
    assert "![Grad-CAM](gradcam.png)" in text
    row = _row(text, "`small_cnn`", "## Grad-CAM")
    assert row[1:] == ["0.734 [0.684–0.774]", "0.410 [0.360–0.450]", "0.324 [0.274–0.364]", "1.79"]
    assert "ph2 (40 images" in text
    # An unknown shape is still shown, flattened.
    (run / "cam_in_mask.json").write_text(json.dumps({"mean": 0.734, "per_class": {"MEL": 0.8}}))
    text = write_run_report(run).read_text()
    assert _row(text, "per_class/MEL", "## Grad-CAM")[1] == "0.800"


def test_load_predictions_defaults_y_pred_to_the_rule(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = _predictions(rng, 20, "X")
    np.savez(tmp_path / "p.npz", y_true=p["y_true"], probs=p["probs"], classes=np.array(HAM7))
    decision = {"rule": "priority_thresholds", **THRESHOLDS}
    pred = load_predictions(tmp_path / "p.npz", HAM7, decision)
    assert np.array_equal(pred.y_pred, decide(p["probs"], HAM7, decision))
    np.savez(tmp_path / "q.npz", y_true=p["y_true"])
    with pytest.raises(EdgedermError, match="missing array 'probs'"):
        load_predictions(tmp_path / "q.npz", HAM7)


# -- figure functions on edge cases -------------------------------------------------------------
def test_plots_on_edge_cases(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n, C = 80, len(HAM7)
    y = rng.choice([0, 1, 2, 3, 4, 6], size=n)  # DF (5) has no samples
    probs = rng.dirichlet(np.ones(C), size=n)
    y_pred = probs.argmax(axis=1)
    y_pred[:3] = 5  # predicted but never true
    _check_png(plot_confusion(y, y_pred, HAM7, tmp_path / "cm.png"))
    _check_png(plot_confusion(y, y_pred, HAM7, tmp_path / "cm_counts.png", normalize=False))
    _check_png(plot_roc(y, probs, HAM7, tmp_path / "roc.png"))
    _check_png(plot_reliability(y, probs, tmp_path / "rel.png"))
    _check_png(plot_reliability(y, probs, tmp_path / "rel1.png", n_bins=1))

    # A single class in y_true: no ROC is defined, the figure says so instead of failing.
    _check_png(plot_roc(np.full(n, 4), probs, HAM7, tmp_path / "roc1.png"))
    # Binary task, perfectly separable, and a one-image reliability diagram.
    yb = np.array([0, 0, 1, 1])
    pb = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    _check_png(plot_roc(yb, pb, ["benign", "malignant"], tmp_path / "roc2.png"))
    _check_png(plot_reliability([1], [[0.2, 0.8]], tmp_path / "rel_one.png"))

    # Other suffixes give that format, written atomically (no temp files left behind).
    plot_confusion(y, y_pred, HAM7, tmp_path / "cm.svg")
    assert (tmp_path / "cm.svg").read_text().lstrip().startswith("<?xml")
    assert not list(tmp_path.glob(".*.tmp"))

    with pytest.raises(ClassMismatchError):
        plot_confusion(y, np.full(n, C), HAM7, tmp_path / "bad.png")
    with pytest.raises(ClassMismatchError):
        plot_roc(y, probs[:, :5], HAM7, tmp_path / "bad.png")
    with pytest.raises(EdgedermError):
        plot_reliability(y, probs, tmp_path / "bad.png", n_bins=0)
    assert not (tmp_path / "bad.png").exists()


def test_training_curves_edge_cases(tmp_path: Path) -> None:
    hist = {
        "only-loss": [{"epoch": 1, "loss": 1.2}, {"epoch": 2, "loss": 0.9}],
        "one-epoch": [{"epoch": 1, "loss": 1.0, "val_bacc": 0.4, "seconds": 3.0}],
        "empty": [],
        "nan": [{"epoch": 1, "loss": float("nan"), "val_bacc": 0.3},
                {"epoch": 2, "loss": 0.5, "val_bacc": 0.35, "lr": 1e-3}],
    }
    _check_png(plot_training_curves(hist, tmp_path / "curves.png"))
    with pytest.raises(EdgedermError, match="empty"):
        plot_training_curves({"a": []}, tmp_path / "none.png")
