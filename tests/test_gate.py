"""The accuracy gate: a good artifact passes; deliberately broken ones fail, each for its reason.

A tiny real run (synthetic dermoscopy set, one small_cnn trained at 32 px with a melanoma
threshold target) is the FP32 reference. Broken artifacts are real ONNX files made from modified
copies of its weights (zeroed, one class collapsed, inputs fed in BGR, an FP16 graph that
overflows) and go through the same runtime and gate as every export.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from edgederm.card import load_card  # noqa: E402
from edgederm.checkpoint import load_checkpoint, member_from_model, save_checkpoint  # noqa: E402
from edgederm.errors import EdgedermError  # noqa: E402
from edgederm.export.context import ExportContext  # noqa: E402
from edgederm.export.gate import Predictions, RecordedBaseline, Tolerances, compare, predict, run_gate  # noqa: E402
from edgederm.export.onnx import fp16_storage_graph  # noqa: E402
from edgederm.export.run import _write_card  # noqa: E402
from edgederm.runtime import load  # noqa: E402

N_BOOT = 100


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def train_tiny_run(root: Path) -> Path:
    """Synthetic data (100 lesions, 40 px) + one small_cnn at 32 px: a real run folder in seconds.

    20 short epochs rather than 1: a one-epoch model is at chance level, and a gate cannot show
    that a broken artifact is worse than a reference that already is."""
    from edgederm.data.synthetic import generate
    from edgederm.train import MemberConfig, TrainConfig, train

    torch.manual_seed(0)
    data = generate(root / "data", n_lesions=100, size=40, seed=3)
    cfg = TrainConfig(
        name="tiny", data=str(data), format="ham10000", out=str(root / "runs"), n_boot=50, val=0.3, test=0.15,
        tta=["identity", "hflip"], report=False, patience=20,
        thresholds={"targets": [{"class": "MEL", "min_sens": 0.85, "min_spec": 0.6}]},
        members=[MemberConfig(model="small_cnn", input_size=32, epochs=20, batch_size=8, lr=0.01, kwargs={"width": 8})],
    )
    return train(cfg)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train_tiny_run(tmp_path_factory.mktemp("gate"))


@pytest.fixture(scope="module")
def ctx(run: Path) -> Any:
    c = ExportContext.from_path(run)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ref(ctx: Any) -> Predictions:
    return predict(load(ctx.checkpoint), ctx.split("val"), name="reference")


def artifact(ctx: Any, tmp: Path, name: str, edit: Callable[[torch.nn.Module], None] | None = None, *,
             storage_fp16: bool = False, card_edit: Callable[[Any], None] | None = None) -> Path:
    """An ONNX artifact (card embedded + sidecar) of the reference's weights after ``edit``."""
    model = ctx.member.build()
    if edit is not None:
        with torch.no_grad():
            edit(model)
    members, card = load_checkpoint(ctx.checkpoint)
    ckpt = save_checkpoint(tmp / f"{name}.pt", [member_from_model(members[0].name, model, members[0].num_classes, **members[0].kwargs)], card)
    sub = ExportContext(ckpt, run_dir=ctx.run_dir, cache_dir=tmp / f"cache-{name}")
    out = tmp / f"{name}.onnx"
    if storage_fp16:
        fp16_storage_graph(sub.onnx_fp32(), out)
    else:
        shutil.copyfile(sub.onnx_fp32(), out)
    acard = sub.export_card(target="onnx", fmt="onnx", precision="fp16" if storage_fp16 else "fp32")
    if card_edit is not None:
        card_edit(acard)
    _write_card(out, acard, "onnx")
    return out


def gate_of(path: Path, ctx: Any, ref: Predictions, **kw: Any) -> Any:
    return compare(predict(load(path), ctx.split("val"), name=path.name), ref, n_boot=N_BOOT, **kw)


def test_reference_is_better_than_chance(ctx: Any, ref: Predictions) -> None:
    # Otherwise the broken-artifact tests below could not fail for the right reason.
    res = gate_of(ctx.checkpoint, ctx, ref)
    assert res.passed and res.decision_mode == "refit"
    assert res.reference_metrics["bacc"]["value"] > 1 / len(ctx.classes) + 0.15


def test_good_artifact_passes(ctx: Any, ref: Predictions, tmp_path: Path) -> None:
    res = gate_of(artifact(ctx, tmp_path, "good"), ctx, ref)
    assert res.passed and res.reasons == []
    c = res.comparison
    assert c["agreement"] == 1.0 and c["argmax_agreement"] == 1.0 and c["max_prob_diff"] < 1e-4
    assert c["bacc_diff"]["diff"] == 0.0 and c["mcnemar"]["p_value"] == 1.0
    # Thresholds were re-fitted for the artifact on validation, under the multi-class rule.
    assert res.artifact_decision["calibrated_on"]["by"] == "edgederm gate"
    assert res.artifact_decision["rule"] == res.reference_decision["rule"]
    bacc = res.artifact_metrics["bacc"]
    assert bacc["lo"] <= bacc["value"] <= bacc["hi"]
    j, md = res.write(tmp_path / "report")
    assert "**pass**" in md.read_text() and '"passed": true' in j.read_text()


def _zero(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.zero_()


def test_zeroed_weights_fail(ctx: Any, ref: Predictions, tmp_path: Path) -> None:
    res = gate_of(artifact(ctx, tmp_path, "zero", _zero), ctx, ref)
    assert not res.passed
    assert any(r.startswith("BACC dropped") for r in res.reasons)
    assert res.artifact_metrics["bacc"]["value"] < res.reference_metrics["bacc"]["value"] - 0.1


def test_collapsed_class_fails(ctx: Any, ref: Predictions, tmp_path: Path) -> None:
    # The class with the best recall under the reference's (re-fitted) decision rule, made
    # impossible to predict.
    base = gate_of(ctx.checkpoint, ctx, ref).reference_metrics
    support = {c: int((ref.y == k).sum()) for k, c in enumerate(ctx.classes)}
    cls = max(ctx.classes, key=lambda c: (base[f"sensitivity/{c}"]["value"] or 0.0, support[c]))
    k = ctx.classes.index(cls)
    assert base[f"sensitivity/{cls}"]["value"] >= 0.5

    def collapse(model: torch.nn.Module) -> None:
        model.head[-1].bias[k] = -1e4

    res = gate_of(artifact(ctx, tmp_path, "collapse", collapse), ctx, ref)
    assert not res.passed
    assert any(r.startswith(f"{cls} recall dropped") for r in res.reasons), res.reasons
    assert res.artifact_metrics[f"sensitivity/{cls}"]["value"] == 0.0
    # A generous per-class tolerance for that class alone does not hide the BACC loss.
    res2 = gate_of(artifact(ctx, tmp_path, "collapse2", collapse), ctx, ref,
                   tolerances=Tolerances(per_class_pp={cls: 100.0}, mel_sens_pp=100.0))
    assert not any(r.startswith(f"{cls} recall") for r in res2.reasons) and not res2.passed


def test_bgr_inputs_fail(ctx: Any, ref: Predictions, tmp_path: Path) -> None:
    def bgr(card: Any) -> None:
        card.preprocessing = card.preprocessing.with_(channel_order="BGR")

    path = artifact(ctx, tmp_path, "bgr", card_edit=bgr)
    assert load_card(path).preprocessing.channel_order == "BGR"
    res = gate_of(path, ctx, ref)
    assert not res.passed and res.comparison["agreement"] < 1.0


def _overflow(model: torch.nn.Module) -> None:
    # Same function in FP32 (ReLU is positively homogeneous), but the first block's activations
    # exceed the FP16 range (65504) and some folded weights lie beyond it.
    s = 1e6
    model.features[1].weight.mul_(s)
    model.features[1].bias.mul_(s)
    model.features[3].weight.div_(s)


def test_nan_producing_fp16_graph_fails(ctx: Any, ref: Predictions, tmp_path: Path) -> None:
    fp32 = gate_of(artifact(ctx, tmp_path, "scaled32", _overflow), ctx, ref)
    assert fp32.passed and fp32.comparison["max_prob_diff"] < 1e-3  # the rescaling alone is harmless
    res = gate_of(artifact(ctx, tmp_path, "scaled16", _overflow, storage_fp16=True), ctx, ref)
    assert not res.passed
    assert res.reasons[0].startswith("non-finite outputs (NaN/Inf) on")
    assert res.comparison["nonfinite"] > 0 and res.artifact_metrics is None
    assert "non-finite" in res.markdown()
    # The same graph without the overflow stays within tolerance: FP16 rounding alone is fine.
    ok = gate_of(artifact(ctx, tmp_path, "plain16", storage_fp16=True), ctx, ref)
    assert ok.passed and ok.comparison["max_prob_diff"] < 0.05


def test_rules_and_tolerances_on_known_numbers() -> None:
    classes = ["MEL", "NV", "BCC"]
    y = np.array([0] * 10 + [1] * 10 + [2] * 10)
    eye = np.eye(3)
    good = eye[y] * 0.8 + 0.2 / 3
    worse = good.copy()
    worse[[0, 1]] = eye[1] * 0.8 + 0.2 / 3  # two melanomas (20 %) now called NV
    mk = lambda name, p: Predictions(name, classes, [f"i{i}" for i in range(30)], y, [f"l{i}" for i in range(30)], p,  # noqa: E731
                                     {"rule": "argmax"}, ["identity"])
    res = compare(mk("art", worse), mk("ref", good), n_boot=50)
    assert res.decision_mode == "argmax" and not res.passed
    assert res.reasons == [
        "BACC dropped 6.7 pp (1.000 → 0.933); tolerance 1 pp",
        "melanoma sensitivity dropped 20.0 pp (1.000 → 0.800, 10/10 → 8/10 melanomas); tolerance 2 pp",
        "MEL recall dropped 20.0 pp (10/10 → 8/10 images); tolerance 5 pp",
    ]
    assert res.comparison["mcnemar"]["b"] == 2 and res.comparison["agreement"] == pytest.approx(28 / 30)
    loose = compare(mk("art", worse), mk("ref", good), n_boot=50, tolerances=Tolerances(bacc_pp=7, mel_sens_pp=20, class_pp=20))
    assert loose.passed
    # Classes with too few validation images can be reported without being gated.
    few = compare(mk("art", worse), mk("ref", good), n_boot=50, tolerances=Tolerances(bacc_pp=7, mel_sens_pp=20, min_class_support=11))
    assert few.passed
    # A reference that itself gives NaN cannot be a baseline.
    bad = good.copy()
    bad[0] = np.nan
    with pytest.raises(EdgedermError, match="reference"):
        compare(mk("art", good), mk("ref", bad), n_boot=10)


def test_recorded_baseline_card(ctx: Any, run: Path, tmp_path: Path) -> None:
    # The run's own card recorded validation metrics under its calibrated thresholds; the FP32
    # ONNX artifact reproduces them on the same split.
    good = artifact(ctx, tmp_path, "good", None)
    res = run_gate(good, run / "model.pt.card.json", n_boot=N_BOOT, out_dir=tmp_path / "g1")
    assert res.passed and not res.paired, res.reasons
    assert res.artifact_metrics["bacc"]["value"] == pytest.approx(res.reference_metrics["bacc"]["value"])
    assert (tmp_path / "g1" / "gate.md").exists()
    zero = artifact(ctx, tmp_path, "zero", _zero)
    bad = run_gate(zero, run / "model.pt.card.json", n_boot=N_BOOT, out_dir=tmp_path / "g2")
    assert not bad.passed
    with pytest.raises(EdgedermError, match="records no 'all' metrics"):
        run_gate(good, run / "model.pt.card.json", split="all", n_boot=N_BOOT, out_dir=tmp_path / "g3")
    # RecordedBaseline refuses a different evaluation set.
    rb = RecordedBaseline.from_card(load_card(run / "model.pt.card.json"), "val", "card")
    rb.n += 1
    with pytest.raises(EdgedermError, match="not the same evaluation set"):
        compare(predict(load(good), ctx.split("val")), rb, n_boot=10)


def test_gate_cli_exit_codes(ctx: Any, run: Path, tmp_path: Path) -> None:
    from edgederm.export.cli import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    good = artifact(ctx, tmp_path, "good")
    zero = artifact(ctx, tmp_path, "zero", _zero)
    ok = runner.invoke(app, ["gate", str(good), "--baseline", str(run / "model.pt"), "--n-boot", "50", "--out", str(tmp_path / "o1")])
    assert ok.exit_code == 0, ok.output
    assert "**pass**" in ok.output and (tmp_path / "o1" / "gate.json").exists()
    failed = runner.invoke(app, ["gate", str(zero), "--baseline", str(good), "--n-boot", "50", "--out", str(tmp_path / "o2"),
                                 "--tolerance-class", "NV=50"])
    assert failed.exit_code == 1 and "BACC dropped" in failed.output
    missing = runner.invoke(app, ["gate", str(tmp_path / "nope.onnx"), "--baseline", str(good)])
    assert isinstance(missing.exception, EdgedermError) and missing.exception.exit_code == 2
    badtol = runner.invoke(app, ["gate", str(good), "--baseline", str(good), "--tolerance-class", "MEL=x"])
    assert isinstance(badtol.exception, EdgedermError) and badtol.exception.exit_code == 2
