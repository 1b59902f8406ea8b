"""Export targets, the driver and its guarantees, on a tiny real run.

Every target of the registry that this machine can build round-trips the run's model through
the one runtime and agrees with PyTorch within the tolerance stated for its precision (targets
it cannot build skip with the registry's reason). The driver embeds cards, records hashes and
gate verdicts, tries recipes under ``--recipe auto``, and never lets a failing or interrupted
export replace a passing artifact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from edgederm.card import load_card, read_sidecar  # noqa: E402
from edgederm.checkpoint import load_checkpoint, member_from_model, save_checkpoint  # noqa: E402
from edgederm.data.images import load_image  # noqa: E402
from edgederm.errors import EdgedermError, MissingExtraError  # noqa: E402
from edgederm.export import (  # noqa: E402
    TARGETS,
    ExportContext,
    MissingHardwareError,
    Option,
    Recipe,
    Tolerances,
    export_run,
    get_target,
    register_target,
    resolve_checkpoint,
    resolve_targets,
    targets_table,
)
from edgederm.fsutil import sha256_file  # noqa: E402
from edgederm.runtime import load, read_embedded_card  # noqa: E402
from edgederm.runtime.registry import BACKENDS  # noqa: E402

from helpers import tiny_checkpoint  # noqa: E402
from test_gate import train_tiny_run  # noqa: E402

#: Agreement with PyTorch per precision: (largest |Δ probability|, smallest argmax agreement),
#: on validation images, identity view.
TOLERANCE = {"fp32": (1e-4, 1.0), "fp16": (2e-2, 0.95), "int8": (0.3, 0.75)}
FAST = dict(n_boot=20)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train_tiny_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def ctx(run: Path) -> Iterator[ExportContext]:
    c = ExportContext.from_path(run)
    yield c
    c.close()


@pytest.fixture
def temp_targets() -> Iterator[list[str]]:
    """Targets a test registers; removed afterwards so `all` and the table stay the built-ins."""
    names: list[str] = []
    yield names
    for n in names:
        TARGETS.pop(n, None)


# -- the registry ---------------------------------------------------------------------------------
def test_registry_lists_every_target_once() -> None:
    expected = ["onnx", "onnx-fp16", "onnx-int8", "openvino", "openvino-int8", "tflite", "tflite-fp16",
                "tflite-int8", "tensorrt-fp16", "tensorrt-int8", "executorch", "executorch-int8"]
    assert list(TARGETS) == expected
    table = targets_table(availability=True)
    for name, t in TARGETS.items():
        assert f"`{name}`" in table and f"model{t.suffix}" in table
        assert t.format in BACKENDS
    assert "calibration`: minmax\\|entropy\\|percentile" in table
    assert resolve_targets("all") == (list(TARGETS.values()), True)
    assert [t.name for t in resolve_targets("onnx, onnx-int8")[0]] == ["onnx", "onnx-int8"]


def test_typos_get_the_closest_name() -> None:
    with pytest.raises(EdgedermError, match="did you mean 'onnx-int8'"):
        get_target("onnx_int8")
    with pytest.raises(EdgedermError, match="did you mean 'tflite-fp16'"):
        get_target("tflite-fp61")
    t = get_target("onnx-int8")
    with pytest.raises(EdgedermError, match="did you mean 'calibration'"):
        t.resolve_options({"calibraton": "entropy"})
    with pytest.raises(EdgedermError, match="did you mean 'entropy'"):
        t.resolve_options({"calibration": "entropi"})
    with pytest.raises(EdgedermError, match="expected true or false"):
        t.resolve_options({"per_channel": "maybe"})
    opts = t.resolve_options({"per_channel": "false", "calib_images": "16", "percentile": "99.9"})
    assert opts["per_channel"] is False and opts["calib_images"] == 16 and opts["percentile"] == 99.9
    with pytest.raises(EdgedermError, match="--target all cannot be combined"):
        resolve_targets(["all", "onnx"])


def test_missing_extra_is_one_line(temp_targets: list[str]) -> None:
    @register_target("zz-needs-extra", format="onnx", suffix=".onnx", precision="fp32", extra="zzextra",
                     modules=("edgederm_no_such_module",))
    def _build(ctx: Any, out: Path) -> dict[str, Any]:
        raise AssertionError("never built")

    temp_targets.append("zz-needs-extra")
    t = TARGETS["zz-needs-extra"]
    with pytest.raises(MissingExtraError) as e:
        t.check_available()
    assert str(e.value) == "'edgederm_no_such_module' is not installed for the zz-needs-extra target: pip install 'edgederm[zzextra]'"
    assert e.value.exit_code == 2 and t.unavailable_reason() == str(e.value)


def test_tensorrt_says_exactly_what_is_missing(run: Path) -> None:
    t = TARGETS["tensorrt-fp16"]
    if t.available():
        pytest.skip("TensorRT and an NVIDIA GPU are present here")
    msg = t.unavailable_reason()
    assert msg is not None and "\n" not in msg
    assert "needs an NVIDIA GPU" in msg and "the 'tensorrt' package" in msg and "missing here:" in msg
    assert "--precheck" in msg  # what to do instead on this machine
    with pytest.raises(MissingHardwareError) as e:
        export_run(run, ["tensorrt-fp16"], **FAST)
    assert e.value.exit_code == 2


# -- every target round-trips ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TARGETS))
def test_target_roundtrip(name: str, run: Path, ctx: ExportContext, tmp_path: Path) -> None:
    t = TARGETS[name]
    reason = t.unavailable_reason()
    if reason:
        pytest.skip(reason)
    [res] = export_run(run, [name], out_dir=tmp_path, gate=False, **FAST)
    assert res["status"] == "built", res
    path = Path(res["path"])
    assert path == tmp_path / name / f"model{t.suffix}" and path.exists()
    side = read_sidecar(path)
    assert side is not None and side.artifact["sha256"] == sha256_file(path)
    assert side.artifact["target"] == name and side.artifact["format"] == t.format
    assert side.artifact["source"]["sha256"] == sha256_file(ctx.checkpoint)
    if BACKENDS[t.format].embed_card is not None:
        embedded = read_embedded_card(path)
        assert embedded is not None and embedded.classes == ctx.classes and embedded.preprocessing == side.preprocessing
    precision = side.artifact["precision"]
    images = [load_image(r.ref) for r in ctx.split("val").records[:24]]
    got = load(path).predict_proba(images, tta=False)
    want = load(ctx.checkpoint).predict_proba(images, tta=False)
    max_diff, agree = float(np.abs(got - want).max()), float(np.mean(got.argmax(1) == want.argmax(1)))
    tol_diff, tol_agree = TOLERANCE[precision]
    assert max_diff <= tol_diff and agree >= tol_agree, (name, precision, max_diff, agree)


# -- the driver -----------------------------------------------------------------------------------
def test_export_gates_embeds_and_summarises(run: Path, tmp_path: Path) -> None:
    results = export_run(run, ["onnx", "onnx-fp16"], out_dir=tmp_path, **FAST)
    assert [r["status"] for r in results] == ["pass", "pass"]
    for r in results:
        path = Path(r["path"])
        card = load_card(path)  # the embedded one
        assert card.metrics["gate"]["passed"] is True and card.metrics["val"]["n"] == card.metrics["gate"]["n"]
        # The artifact ships the reference's decision rule, the one the gate judged it under.
        assert card.decision == load_card(run / "model.pt").decision
        assert card.metrics["gate"]["decision_mode"] == "card"
        assert card.model["kind"] == "single" and len(card.model["members"]) == 1
        side = read_sidecar(path)
        assert side.artifact["sha256"] == sha256_file(path) == r["sha256"]
        assert side.artifact["size_bytes"] == path.stat().st_size == r["size_bytes"]
        assert (path.parent / "gate.md").exists() and (path.parent / "gate.json").exists()
    assert results[1]["size_bytes"] < 0.7 * results[0]["size_bytes"]  # FP16 weights
    md = (tmp_path / "gate.md").read_text()
    assert "| reference: model.pt (FP32)" in md and "| onnx |" in md and "| onnx-fp16 |" in md
    assert "BACC [95% CI]" in md and "MEL sens [95% CI]" in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["target"] for r in summary["results"]] == ["onnx", "onnx-fp16"]
    # A later export of another target keeps the earlier passing rows in the summary.
    export_run(run, ["onnx-int8"], out_dir=tmp_path, tolerances=Tolerances(bacc_pp=100, mel_sens_pp=100, class_pp=100), **FAST)
    md = (tmp_path / "gate.md").read_text()
    assert "| onnx |" in md and "| onnx-int8 |" in md


def test_onnx_int8_recipes(run: Path, tmp_path: Path) -> None:
    loose = Tolerances(bacc_pp=100, mel_sens_pp=100, class_pp=100)
    [r] = export_run(run, ["onnx-int8"], out_dir=tmp_path / "a", tolerances=loose,
                     options={"keep_float": "sensitive", "n_sensitive": 2, "calib_images": 32}, **FAST)
    info = load_card(r["path"]).artifact["exporter"]
    worst = sorted(info["sensitivity_db"], key=lambda n: -info["sensitivity_db"][n])[:2]
    assert info["nodes_excluded"] == worst
    assert info["activations"] == "uint8" and info["weights"] == "int8" and info["format"] == "QDQ"
    [f] = export_run(run, ["onnx-int8"], out_dir=tmp_path / "f", tolerances=loose,
                     options={"keep_float": "first-last", "calibration": "entropy", "calib_images": 32}, **FAST)
    first, last = load_card(f["path"]).artifact["exporter"]["nodes_excluded"]
    assert first.endswith("features.0/Conv") and last.endswith("Gemm")
    [d] = export_run(run, ["onnx-int8"], out_dir=tmp_path / "b", tolerances=loose, options={"method": "dynamic"}, **FAST)
    assert load_card(d["path"]).artifact["exporter"]["method"] == "dynamic"
    # --recipe auto: recipes are tried fastest first and the first that passes is kept.
    [a] = export_run(run, ["onnx-int8"], out_dir=tmp_path / "c", recipe="auto", **FAST)
    names = [s.name for s in TARGETS["onnx-int8"].auto]
    tried = a["recipes_tried"]
    assert [x["recipe"] for x in tried] == names[: len(tried)]
    assert all(x["status"] == "fail" for x in tried[:-1])
    assert (tried[-1]["status"] == "pass") == (a["status"] == "pass")
    assert load_card(a["path"]).metrics["recipes_tried"] == json.loads(json.dumps(tried))


def _zeroed_onnx(ctx: ExportContext, out: Path) -> None:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(ctx.onnx_fp32()))
    for init in m.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    onnx.save(m, str(out))


def test_recipe_auto_keeps_the_first_passing_and_records_all(run: Path, tmp_path: Path, temp_targets: list[str]) -> None:
    @register_target("zz-auto", format="onnx", suffix=".onnx", precision="fp32",
                     options={"broken": Option(False, "zero every weight")},
                     auto=(Recipe("broken", {"broken": True}), Recipe("sound", {"broken": False}), Recipe("never")))
    def _build(ctx: ExportContext, out: Path, *, broken: bool) -> dict[str, Any]:
        if broken:
            _zeroed_onnx(ctx, out)
        else:
            out.write_bytes(ctx.onnx_fp32().read_bytes())
        return {"broken": broken}

    temp_targets.append("zz-auto")
    [r] = export_run(run, ["zz-auto"], out_dir=tmp_path, recipe="auto", **FAST)
    assert r["status"] == "pass" and r["recipe"] == "sound"
    tried = load_card(r["path"]).metrics["recipes_tried"]
    assert [(x["recipe"], x["status"]) for x in tried] == [("broken", "fail"), ("sound", "pass")]
    assert any("BACC dropped" in reason for reason in tried[0]["reasons"])
    assert tried[1]["gate"]["bacc"]["value"] > tried[0]["gate"]["bacc"]["value"]


def test_failing_or_interrupted_export_keeps_the_passing_artifact(run: Path, tmp_path: Path, temp_targets: list[str]) -> None:
    mode = {"how": "ok"}

    @register_target("zz-atomic", format="onnx", suffix=".onnx", precision="fp32")
    def _build(ctx: ExportContext, out: Path) -> dict[str, Any]:
        data = ctx.onnx_fp32().read_bytes()
        if mode["how"] == "ok":
            out.write_bytes(data)
        elif mode["how"] == "zero":
            _zeroed_onnx(ctx, out)
        else:
            out.write_bytes(data[: len(data) // 2])  # a partial file, then the process is interrupted
            raise KeyboardInterrupt if mode["how"] == "interrupt" else RuntimeError("converter crashed")
        return {}

    temp_targets.append("zz-atomic")
    [first] = export_run(run, ["zz-atomic"], out_dir=tmp_path, **FAST)
    assert first["status"] == "pass"
    path = Path(first["path"])
    digest, side = sha256_file(path), path.with_name(path.name + ".card.json").read_text()

    def unchanged() -> None:
        assert sha256_file(path) == digest and path.with_name(path.name + ".card.json").read_text() == side
        assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    mode["how"] = "crash"
    with pytest.raises(EdgedermError, match="zz-atomic failed: RuntimeError: converter crashed"):
        export_run(run, ["zz-atomic"], out_dir=tmp_path, **FAST)
    unchanged()
    mode["how"] = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        export_run(run, ["zz-atomic"], out_dir=tmp_path, **FAST)
    unchanged()
    mode["how"] = "zero"  # builds fine, fails the gate: goes to .rejected, the passing one stays
    [bad] = export_run(run, ["zz-atomic"], out_dir=tmp_path, **FAST)
    assert bad["status"] == "fail" and Path(bad["path"]).parent == tmp_path / ".rejected" / "zz-atomic"
    assert (tmp_path / ".rejected" / "zz-atomic" / "gate.md").exists()
    unchanged()


def test_hard_kill_leftovers_are_recovered(run: Path, tmp_path: Path) -> None:
    from edgederm.export.run import _recover

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_tmp = tmp_path / f".onnx.tmp-{dead.pid}-abcd1234"
    moved_aside = tmp_path / f".onnx-fp16.old-{dead.pid}-abcd1234"
    for d in (stale_tmp, moved_aside):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"x")
    live = tmp_path / f".onnx-int8.tmp-{os.getpid()}-abcd1234"  # ours: still running, left alone
    live.mkdir()
    _recover(tmp_path)
    assert not stale_tmp.exists() and not moved_aside.exists() and live.exists()
    assert (tmp_path / "onnx-fp16" / "model.onnx").read_bytes() == b"x"  # put back


def test_tensorrt_fp16_precheck(run: Path, ctx: ExportContext, tmp_path: Path) -> None:
    [r] = export_run(run, ["tensorrt-fp16"], out_dir=tmp_path, precheck=True, **FAST)
    assert r["status"] == "precheck-pass" and r["nonfinite"] == 0
    assert r["max_prob_diff"] < 0.05 and r["argmax_agreement"] >= 0.95
    assert (tmp_path / "tensorrt-fp16-precheck" / "gate.md").exists()
    assert not (tmp_path / "tensorrt-fp16").exists()  # a precheck makes no artifact
    with pytest.raises(EdgedermError, match="--precheck is available for tensorrt-fp16"):
        export_run(run, ["onnx"], out_dir=tmp_path, precheck=True, **FAST)

    # A network whose activations overflow FP16 (identical in FP32): the precheck catches the
    # NaN/Inf, and so does the gate of every FP16 artifact, even where the runtime computes in FP32.
    model = ctx.member.build()
    with torch.no_grad():
        model.features[1].weight.mul_(1e5)
        model.features[1].bias.mul_(1e5)
        model.features[3].weight.div_(1e5)
    members, card = load_checkpoint(ctx.checkpoint)
    ckpt = save_checkpoint(tmp_path / "scaled" / "model.pt",
                           [member_from_model(members[0].name, model, members[0].num_classes, **members[0].kwargs)], card)
    results = export_run(ckpt, ["onnx", "onnx-fp16"], **FAST)
    assert [r["status"] for r in results] == ["pass", "fail"]
    assert any(x.startswith("overflows FP16: non-finite outputs on") for x in results[1]["reasons"])
    [p] = export_run(ckpt, ["tensorrt-fp16"], precheck=True, **FAST)
    assert p["status"] == "precheck-fail" and p["nonfinite"] > 0 and "non-finite" in p["reason"]


def test_ensembles_must_be_distilled_first(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    tiny_checkpoint(run / "model.pt", members=2)
    with pytest.raises(EdgedermError, match=r"2-member ensemble.*edgederm distill"):
        resolve_checkpoint(run)
    student = tiny_checkpoint(run / "distill-efficientnet_lite0" / "model.pt")
    assert resolve_checkpoint(run) == (student, run)
    assert resolve_checkpoint(run / "model.pt") == (student, run)


def test_calibration_uses_the_train_split_only(ctx: ExportContext) -> None:
    train_ids = {r.image_id for r in ctx.split("train").records}
    other = {r.image_id for s in ("val", "test") for r in ctx.split(s).records}
    calib = ctx.calibration_batches(40, 8)
    assert {r.image_id for r in calib.records} <= train_ids and not other & {r.image_id for r in calib.records}
    present = sorted({r.label for r in ctx.split("train").records})
    assert sorted({r.label for r in calib.records[: len(present)]}) == present  # class-balanced order
    batches = list(calib)
    assert len(batches) == 5 and batches[0].shape == (8, 3, 32, 32) and batches[0].dtype == np.float32
    assert np.array_equal(batches[0], list(calib)[0])  # re-iterable, deterministic


def test_export_cli(run: Path, tmp_path: Path) -> None:
    from edgederm.export.cli import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    listed = runner.invoke(app, ["export", "--list"])
    assert listed.exit_code == 0 and "`onnx-int8`" in listed.output
    typo = runner.invoke(app, ["export", str(run), "--target", "onx"])
    assert isinstance(typo.exception, EdgedermError) and "did you mean 'onnx'" in str(typo.exception)
    badopt = runner.invoke(app, ["export", str(run), "--target", "onnx-int8", "--opt", "calibraton=entropy"])
    assert isinstance(badopt.exception, EdgedermError) and badopt.exception.exit_code == 2
    ok = runner.invoke(app, ["export", str(run), "--target", "onnx", "--out", str(tmp_path), "--n-boot", "20"])
    assert ok.exit_code == 0, ok.output
    assert "| onnx |" in ok.output and "onnx: pass" in ok.output
    fail = runner.invoke(app, ["export", str(run), "--target", "onnx-int8", "--out", str(tmp_path), "--n-boot", "20",
                               "--min-agreement", "1"])
    assert fail.exit_code == 1 and "onnx-int8: FAIL" in fail.output
