"""The local bench target on a tiny model in every runtime installed here, and the CLI + report.

A tiny small_cnn checkpoint is exported with the official tools (torch.onnx; OpenVINO's
convert_model; litert-torch) and each file gets the checkpoint's card embedded through its
runtime backend, with a gate result in the card's metrics. The local target measures every
artifact in a fresh process through ``edgederm.runtime.load``; the results must describe what ran
(counts, shapes, threads, the card's BACC, FLOPs that agree with the model) — speeds are recorded,
never asserted.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgederm.bench import ResultsStore, Settings, run_bench, write_report
from edgederm.bench.measure import count_flops, onnx_flops
from edgederm.checkpoint import load_checkpoint
from edgederm.errors import EdgedermError
from edgederm.runtime.registry import BACKENDS

from helpers import tiny_checkpoint

SIZE = 32
GATE = {"passed": True, "split": "val", "n": 40, "bacc": {"value": 0.55, "lo": 0.41, "hi": 0.69},
        "reference_bacc": {"value": 0.57, "lo": 0.43, "hi": 0.71}}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _card_for(card, fmt: str, ckpt: Path, bacc: float):
    c = card.copy()
    c.artifact = {"format": fmt, "precision": "fp32", "target": f"{fmt}-fp32", "source": {"checkpoint": str(ckpt)}}
    c.metrics = {"gate": {**GATE, "bacc": {**GATE["bacc"], "value": bacc}}}
    return c


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("bench-local")
    ckpt = tiny_checkpoint(d / "model.pt", size=SIZE)
    members, card = load_checkpoint(ckpt)
    model = members[0].build()
    x = torch.zeros(1, 3, SIZE, SIZE)
    out: dict[str, Path] = {"torch": ckpt}
    onnx_path = d / "export" / "onnx-fp32" / "model.onnx"
    onnx_path.parent.mkdir(parents=True)
    torch.onnx.export(model, x, str(onnx_path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    BACKENDS["onnx"].embed_card(onnx_path, _card_for(card, "onnx", ckpt, 0.55))
    out["onnx"] = onnx_path
    if BACKENDS["openvino"].available():
        import openvino as ov

        xml = d / "export" / "openvino-fp32" / "model.xml"
        xml.parent.mkdir(parents=True)
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        BACKENDS["openvino"].embed_card(xml, _card_for(card, "openvino", ckpt, 0.54))
        out["openvino"] = xml
    if BACKENDS["tflite"].available() and importlib.util.find_spec("litert_torch") is not None:
        import litert_torch

        tfl = d / "export" / "tflite-fp32" / "model.tflite"
        tfl.parent.mkdir(parents=True)
        litert_torch.convert(model, (x,)).export(str(tfl))
        BACKENDS["tflite"].embed_card(tfl, _card_for(card, "tflite", ckpt, 0.56))
        out["tflite"] = tfl
    # A rejected artifact must not be benchmarked when a whole export folder is given.
    rejected = d / "export" / ".rejected" / "onnx-int8" / "model.onnx"
    rejected.parent.mkdir(parents=True)
    rejected.write_bytes(onnx_path.read_bytes())
    return out


@pytest.fixture(scope="module")
def bench(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("bench-out")
    settings = Settings(threads=[1], batches=[1], warmup=2, runs=12, e2e_runs=3)
    # The export folder (every runtime's artifact) + the torch baseline found through the cards.
    results = run_bench([artifacts["onnx"].parents[1]], "local", out, settings, progress=False)
    return out, results


def test_every_installed_runtime_is_measured(artifacts, bench) -> None:
    out, results = bench
    by_runtime = {r["runtime"]: r for r in results}
    expected = {"onnxruntime", "pytorch-eager"} | ({"openvino"} if "openvino" in artifacts else set()) | \
               ({"litert"} if "tflite" in artifacts else set())
    assert set(by_runtime) == expected, [(r["runtime"], r["status"], r.get("error")) for r in results]
    assert all(".rejected" not in r["artifact"]["path"] for r in results)
    for rt, r in by_runtime.items():
        assert r["status"] == "ok", (rt, r.get("error"))
        assert r["tool"] == "edgederm" and r["target"] == "local" and r["threads"] == 1 and r["batch"] == 1
        lat = r["latency_ms"]
        assert lat["n"] == 12 and len(r["samples_ms"]) == 12
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["p50"] == pytest.approx(float(np.percentile(r["samples_ms"], 50)), rel=1e-3, abs=1e-4)
        assert r["throughput_ips"] == pytest.approx(1000.0 / lat["mean"])
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and r["import_ms"] >= 0
        assert r["peak_rss_bytes"] >= r["rss_before_load_bytes"] > 0
        assert r["input_shape"] == [1, 3, SIZE, SIZE]
        # image -> decision: the card's TTA views (identity only here), batch 1, on a JPEG
        assert r["e2e_ms"]["n"] == 3 and r["e2e"]["views"] == 1 and r["e2e"]["image"].endswith(".jpg")
        assert r["e2e_ms"]["p50"] > r["e2e"]["decode_ms"]["p50"] > 0
        env = r["env"]
        assert env["cpu"]["logical_cpus"] == os.cpu_count() and env["edgederm"] and env["python"]
        assert env["peak"]["cores_used"] == 1 and env["peak"]["gflops"] == pytest.approx(env["peak"]["per_core_gflops"])
        assert "edgederm.bench.measure" in r["exec_command"]
        # FLOPs of the same network, whatever the format: 2 x MACs of the convs and the linear layer.
        assert r["flops"]["per_image"] == by_runtime["pytorch-eager"]["flops"]["per_image"]
        assert r["gflops"]["achieved"] == pytest.approx(r["flops"]["per_image"] / (lat["p50"] / 1e3) / 1e9)
    assert by_runtime["onnxruntime"]["accuracy"]["bacc"] == 0.55
    assert by_runtime["onnxruntime"]["accuracy"]["source"].startswith("export gate")
    # the checkpoint's card records no metrics: its BACC is the gate's reference (same validation images)
    assert by_runtime["pytorch-eager"]["accuracy"] == {"bacc": 0.57, "lo": 0.43, "hi": 0.71, "source": "export gate reference (val, n=40)"}
    assert by_runtime["onnxruntime"]["artifact"]["label"] == "onnx-fp32"
    if "openvino" in by_runtime:  # the IR's size includes its .bin
        xml = artifacts["openvino"]
        assert by_runtime["openvino"]["artifact"]["size_bytes"] == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    # appended, in order, nothing else
    assert [r["id"] for r in ResultsStore(out).read()] == [r["id"] for r in results]


def test_flop_counts_agree_with_the_torch_counter(artifacts) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    members, _ = load_checkpoint(artifacts["torch"])
    with FlopCounterMode(display=False) as fc:
        members[0].build()(torch.zeros(1, 3, SIZE, SIZE))
    expected = fc.get_total_flops()
    # small_cnn width 4 at 32 px: its convolutions and the classifier, 2 FLOP per MAC
    assert expected > 1e6
    assert onnx_flops(artifacts["onnx"])["per_image"] == expected
    assert count_flops(artifacts["onnx"], None)["method"].startswith("ONNX graph")
    assert count_flops(artifacts["torch"])["per_image"] == expected


def test_report_has_tables_pareto_and_plots(bench) -> None:
    out, results = bench
    paths = write_report(out)
    md = paths["markdown"].read_text(encoding="utf-8")
    html = paths["html"].read_text(encoding="utf-8")
    for png in ("latency-local.png", "pareto.png"):
        data = (out / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"plots/{png}" in md and f"plots/{png}" in html
    assert "## Pareto: latency vs BACC" in md and "export gate (val, n=40)" in md
    # every measured runtime has a row; BACC shown for the exported artifacts
    for r in results:
        assert r["runtime"] in md
    assert "0.550 [0.410–0.690]" in md
    assert "FlopCounterMode" in md and "FLOP/cycle" in md
    assert "<table>" in html and "Pareto" in html


def test_failed_configuration_is_recorded_and_the_run_goes_on(artifacts, tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    # A file the runtime cannot open: no card, then the measuring process fails -> status error.
    results = run_bench([bad, artifacts["onnx"]], "local", tmp_path / "out",
                        Settings(threads=[1], warmup=0, runs=3, e2e_runs=0), torch_baseline=False, progress=False)
    assert [r["status"] for r in results] == ["error", "ok"]
    assert "broken.onnx" in results[0]["error"] and "\n" not in results[0]["error"]
    assert len(ResultsStore(tmp_path / "out").read()) == 2


def test_cli_bench_then_bench_report(artifacts, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from edgederm.bench.cli import register

    app = typer.Typer()
    register(app)
    out = tmp_path / "cli"
    runner = CliRunner()
    res = runner.invoke(app, ["bench", str(artifacts["onnx"]), "--out", str(out), "--threads", "1", "--batch", "2",
                              "--warmup", "1", "--runs", "5", "--e2e-runs", "2", "--no-torch-baseline", "--no-report"])
    assert res.exit_code == 0, res.output
    assert "p50" in res.output and "results.jsonl" in res.output
    recs = ResultsStore(out).read()
    assert [(r["batch"], r["status"], r["threads"]) for r in recs] == [(2, "ok", 1)]
    assert recs[0]["input_shape"] == [2, 3, SIZE, SIZE] and "e2e_ms" not in recs[0]  # image -> decision at batch 1 only
    assert recs[0]["latency_ms"]["n"] == 5
    # a second run appends (never overwrites), then the report
    res = runner.invoke(app, ["bench", str(artifacts["onnx"]), "--out", str(out), "--threads", "1", "--batch", "2",
                              "--warmup", "0", "--runs", "3", "--e2e-runs", "0", "--no-torch-baseline"])
    assert res.exit_code == 0, res.output
    again = ResultsStore(out).read()
    assert len(again) == 2 and again[0]["id"] == recs[0]["id"] and again[1]["run_id"] != recs[0]["run_id"]
    assert "report.md" in res.output
    res = runner.invoke(app, ["bench-report", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "2 results read" in md and "1 configuration(s)" in md  # the latest result of each configuration
    assert "| onnx-fp32 | local | onnxruntime | 1 | 2 |" in md and "| 3 |" in md
    # bad input: one line, exit code 2 through the main entry point's handler
    with pytest.raises(EdgedermError, match="unknown bench target"):
        run_bench([artifacts["onnx"]], "bluetooth://x", tmp_path / "x", progress=False)
    res = runner.invoke(app, ["bench", str(tmp_path / "missing.onnx"), "--out", str(out)])
    assert res.exit_code != 0 and isinstance(res.exception, EdgedermError)


def test_results_are_valid_json_lines(bench) -> None:
    out, _ = bench
    for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        assert doc["schema"] == "edgederm.bench.result" and doc["schema_version"] == 1
