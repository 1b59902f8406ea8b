"""``edgederm run``: the whole main job at toy scale, its report against the by-hand commands,
and the up-to-date / failure / changed-recipe behaviour of the stage cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgederm.cli import app
from edgederm.errors import EdgedermError
from edgederm.pipeline import STAGES, run_pipeline

pytest.importorskip("onnxruntime", reason="the pipeline test exports ONNX: pip install 'edgederm[onnx]'")

N_BOOT = 60


def _recipe(tmp: Path, **changes: object) -> Path:
    r = {
        "name": "toy", "data": str(tmp / "data"), "format": "ham10000", "taxonomy": "ham7", "out": str(tmp / "runs"),
        "seed": 3, "val": 0.25, "test": 0.25, "patience": 2, "n_boot": N_BOOT, "threads": 1, "tta": ["identity", "hflip"],
        "thresholds": {"targets": [{"class": "MEL", "min_sens": 0.85, "min_spec": 0.85}]},
        "synthetic": {"n_lesions": 84, "size": 48, "seed": 1},
        "members": [{"model": "small_cnn", "input_size": 32, "epochs": 3, "batch_size": 16, "lr": 0.003,
                     "from_scratch": True, "kwargs": {"width": 8}}],
        "pipeline": {
            "distill": {"student": "small_cnn", "input_size": 32, "epochs": 2, "batch_size": 16, "pretrained": False,
                        "from_scratch": True, "student_kwargs": {"width": 8}},
            # A toy set: 44 validation images, some classes with 1–2; the gate's minimums are
            # lowered explicitly, as a user must.
            "export": {"targets": ["onnx", "onnx-int8"], "gate": {"min_images": 20, "min_class_support": 1}},
            "bench": {"threads": [1], "runs": 5, "warmup": 1, "e2e_runs": 2},
            "gradcam": {"n_images": 2},
        },
    }
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(r.get(k), dict):
            r[k] = {**r[k], **v}
        else:
            r[k] = v
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    return path


def _state(run: Path) -> dict:
    return json.loads((run / "pipeline.json").read_text())


def _last(run: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in _state(run)["last_run"]["stages"]}


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("pipe")
    recipe = _recipe(tmp)
    res = CliRunner().invoke(app, ["run", str(recipe)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return tmp, tmp / "runs" / "toy"


def test_first_run_makes_every_output(done: tuple[Path, Path]) -> None:
    _, run = done
    assert _last(run) == {s: "ran" for s in STAGES}
    rep = run / "pipeline-report"
    for f in ("report.md", "report.html", "results.json", "gradcam.png"):
        assert (rep / f).is_file(), f
    md = (rep / "report.md").read_text()
    for section in ("## Results", "## Confusion matrices and ROC", "## Grad-CAM", "## Export gate", "## Latency vs BACC"):
        assert section in md
    for img in ("plots/confusion-ensemble.png", "plots/roc-student.png", "plots/bench-pareto.png"):
        assert (rep / img).is_file() and f"({img})" in md
    doc = json.loads((rep / "results.json").read_text())
    labels = [r["label"] for r in doc["rows"]]
    assert labels == ["ensemble (PyTorch)", "student (PyTorch)", "onnx", "onnx-int8"]
    for r in doc["rows"]:
        assert r["test"]["n"] == doc["n"] > 0
        assert 0 <= r["test"]["bacc"]["lo"] <= r["test"]["bacc"]["value"] <= r["test"]["bacc"]["hi"] <= 1
        assert r["bench"] and r["bench"]["p50_ms"] > 0, r["label"]
    # The ensemble is scored with its card's TTA views; the ONNX export is the student.
    assert doc["rows"][0]["test"]["tta_views"] == 2
    assert doc["rows"][2]["gate"] in ("pass",)


def test_report_matches_evaluate_and_bench_by_hand(done: tuple[Path, Path]) -> None:
    tmp, run = done
    doc = json.loads((run / "pipeline-report" / "results.json").read_text())
    row = next(r for r in doc["rows"] if r["label"] == "onnx")
    out = tmp / "by-hand.json"
    res = CliRunner().invoke(app, ["evaluate", row["path"], "--data", str(tmp / "data"), "--format", "ham10000",
                                   "--split-file", str(run / "split.csv"), "--split", "test", "--n-boot", str(N_BOOT),
                                   "--threads", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    hand = json.loads(out.read_text())
    assert hand["n"] == row["test"]["n"]
    for k in ("bacc", "mel_sensitivity", "mel_specificity"):
        for part in ("value", "lo", "hi"):
            assert hand["ci"][k][part] == pytest.approx(row["test"][k][part], abs=1e-12), (k, part)
    # Latency: the report's p50 is the bench store's result for this artifact's bytes.
    results = [json.loads(line) for line in (run / "bench" / "results.jsonl").read_text().splitlines()]
    match = next(r for r in results if r["id"] == row["bench"]["result_id"])
    assert match["artifact"]["sha256"] == row["sha256"]
    assert match["latency_ms"]["p50"] == row["bench"]["p50_ms"]
    from edgederm.bench.report import format_ms  # the report's own formatter (3 decimals under 1 ms)

    assert format_ms(row["bench"]["p50_ms"]) in (run / "pipeline-report" / "report.md").read_text()


def test_rerun_skips_up_to_date_stages_and_redoes_changed_ones(done: tuple[Path, Path]) -> None:
    tmp, run = done
    before = (run / "model.pt").stat().st_mtime_ns
    res = CliRunner().invoke(app, ["run", str(tmp / "recipe.yaml")])
    assert res.exit_code == 0, res.output
    assert set(_last(run).values()) == {"skipped"}
    assert "stage train     skipped" in res.output and "stage report    skipped" in res.output
    # Only the bench options change: training, distillation, export and evaluation are reused.
    run_pipeline(_recipe(tmp, pipeline={**yaml.safe_load((tmp / "recipe.yaml").read_text())["pipeline"],
                                        "bench": {"threads": [1], "runs": 4, "warmup": 1, "e2e_runs": 1}}), progress=False)
    assert _last(run) == {"train": "skipped", "distill": "skipped", "export": "skipped", "evaluate": "skipped",
                          "bench": "ran", "report": "ran"}
    # An output changed behind the pipeline's back is rebuilt (content hashes, not timestamps).
    onnx = next((run / "export" / "onnx").glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    run_pipeline(tmp / "recipe.yaml", progress=False)
    last = _last(run)
    assert last["train"] == last["distill"] == "skipped" and last["export"] == "ran"
    assert (run / "model.pt").stat().st_mtime_ns == before


def test_failed_stage_keeps_earlier_outputs_and_resumes_there(done: tuple[Path, Path]) -> None:
    tmp, run = done
    pipe = yaml.safe_load((tmp / "recipe.yaml").read_text())["pipeline"]
    student = run / "distill-small_cnn" / "model.pt"
    kept = {p: p.read_bytes() for p in (run / "model.pt", student)}
    bad = _recipe(tmp, pipeline={**pipe, "export": {"targets": ["onnx"], "options": {"no_such_option": 1}}})
    with pytest.raises(EdgedermError, match="no_such_option"):
        run_pipeline(bad, progress=False)
    assert _state(run)["stages"]["export"]["status"] == "failed"
    assert all(p.read_bytes() == b for p, b in kept.items())
    run_pipeline(_recipe(tmp), progress=False)
    last = _last(run)
    assert last["train"] == last["distill"] == "skipped" and last["export"] == "ran"


def test_changed_recipe_needs_force_and_keeps_the_old_run(done: tuple[Path, Path]) -> None:
    tmp, run = done
    changed = _recipe(tmp, seed=4)
    with pytest.raises(EdgedermError, match="--force"):
        run_pipeline(changed, progress=False, until="train")
    run_pipeline(changed, progress=False, force=True, until="train")
    assert _last(run) == {"train": "ran"}
    old = [p for p in run.parent.iterdir() if p.name.startswith("toy.prev-")]
    assert len(old) == 1 and (old[0] / "model.pt").is_file() and (old[0] / "pipeline-report" / "report.md").is_file()


def test_unknown_pipeline_keys_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgedermError, match=r"pipeline\.distill: \['epoch'\]"):
        run_pipeline(_recipe(tmp_path, pipeline={"distill": {"epoch": 2}}), progress=False)
    with pytest.raises(EdgedermError, match=r"pipeline\.bench: \['thread'\]"):
        run_pipeline(_recipe(tmp_path, pipeline={"bench": {"thread": 2}}), progress=False)
    with pytest.raises(EdgedermError, match="unknown pipeline sections"):
        run_pipeline(_recipe(tmp_path, pipeline={"benchmark": {}}), progress=False)


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "train").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_have_valid_pipeline_sections(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgederm.pipeline import PipelineConfig
    from edgederm.train import load_recipe

    monkeypatch.setenv("EDGEDERM_DATA", "/nonexistent")
    raw = yaml.safe_load(recipe.read_text())
    if "members" not in raw:
        pytest.skip("not a classifier recipe")
    cfg = load_recipe(recipe)
    pcfg = PipelineConfig.from_section(cfg.pipeline, str(recipe))
    assert pcfg.export["targets"]
