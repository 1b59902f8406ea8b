"""The accuracy gate, both ways, on real exported artifacts.

A tiny real run (synthetic dermoscopy set, one small_cnn trained at 32 px with a calibrated
melanoma threshold) is the FP32 reference, exported by ``export_run`` like any run. Broken
artifacts are real files derived from the exports — a shipped all-MEL threshold, swapped class
names, a +10 bias, zeroed weights, BGR preprocessing, an FP16 graph that overflows — each written
consistently (card embedded, sidecar, SHA-256) as a faulty exporter would write it; each must
FAIL (exit 1). Too little data, another class list or a corrupt file must exit 2. Faithful ones —
the FP32 ONNX and copies of it, every FP16 artifact, the TensorRT FP16 CPU precheck, a copy whose
probabilities differ by ≤ 0.005 — must pass.
"""

from __future__ import annotations

import json
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
from edgederm.export.gate import (  # noqa: E402
    InsufficientData,
    PoolPredictions,
    Predictions,
    RecordedBaseline,
    Tolerances,
    clopper_pearson,
    compare,
    fidelity_check,
    predict,
    run_gate,
)
from edgederm.export.run import export_run  # noqa: E402
from edgederm.formats.onnx.export import fp16_storage_graph  # noqa: E402
from edgederm.export.run import _write_card  # noqa: E402
from edgederm.runtime import load  # noqa: E402

N_BOOT = 100


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def train_tiny_run(root: Path) -> Path:
    """Synthetic data (100 lesions, 40 px) + one small_cnn at 32 px: a real run folder in seconds.

    20 short epochs rather than 1: a one-epoch model is at chance level, and a gate cannot show
    that a broken artifact is worse than a reference that already is. 160 lesions leave every
    class ≥ 7 validation images (91 in all), enough for the gate's default minimums."""
    from edgederm.data.synthetic import generate
    from edgederm.train import MemberConfig, TrainConfig, train

    torch.manual_seed(0)
    data = generate(root / "data", n_lesions=160, size=40, seed=3)
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
    """An ONNX artifact (card embedded, sidecar with SHA-256) of the reference's weights after ``edit``."""
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
    _seal(out, acard, "onnx")
    return out


def _seal(path: Path, card: Any, fmt: str) -> None:
    """Embed the card and write a sidecar that records the file's SHA-256, as export does."""
    _write_card(path, card, fmt)
    card.describe_artifact(path, fmt=fmt, precision=str(card.artifact.get("precision", "fp32")))
    card.write_sidecar(path)


def recarded(src: Path, tmp: Path, name: str, card_edit: Callable[[Any], None]) -> Path:
    """A copy of an exported artifact whose card was changed and consistently re-written."""
    dst = tmp / f"{name}{src.suffix}"
    shutil.copyfile(src, dst)
    card = load_card(src)
    card_edit(card)
    _seal(dst, card, {".onnx": "onnx", ".tflite": "tflite"}[src.suffix])
    return dst


def gate_of(path: Path, ctx: Any, ref: Predictions, **kw: Any) -> Any:
    return compare(predict(load(path), ctx.split("val"), name=path.name), ref, n_boot=N_BOOT, **kw)


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The run exported as a user would: ONNX FP32/FP16 (+ TFLite FP32/FP16 and OpenVINO FP16
    where installed), each gated; and the TensorRT FP16 CPU precheck."""
    import importlib.util

    targets = ["onnx", "onnx-fp16"]
    if importlib.util.find_spec("ai_edge_litert") and importlib.util.find_spec("litert_torch"):
        targets += ["tflite", "tflite-fp16"]
    if importlib.util.find_spec("openvino"):
        targets += ["openvino"]  # FP16 weights
    out = tmp_path_factory.mktemp("exported")
    results = {r["target"]: r for r in export_run(run, targets, out_dir=out, n_boot=N_BOOT)}
    [pre] = export_run(run, ["tensorrt-fp16"], out_dir=out / "pre", precheck=True, n_boot=N_BOOT)
    results["tensorrt-fp16-precheck"] = pre
    return results


def test_reference_is_better_than_chance(ctx: Any, ref: Predictions) -> None:
    # Otherwise the broken-artifact tests below could not fail for the right reason.
    res = gate_of(ctx.checkpoint, ctx, ref)
    assert res.passed and res.decision_mode == "card"
    assert res.reference_metrics["bacc"]["value"] > 1 / len(ctx.classes) + 0.15
    assert res.reference_decision["rule"] == "priority_thresholds"  # a shipped MEL threshold is judged


# -- must PASS ------------------------------------------------------------------------------------
def test_faithful_exports_pass(exported: dict[str, Any], run: Path, tmp_path: Path) -> None:
    for name, r in exported.items():
        if name == "tensorrt-fp16-precheck":
            assert r["status"] == "precheck-pass", r
            assert r["argmax_agreement"] >= 0.99
            continue
        assert r["status"] == "pass", (name, r.get("reasons"))
        g = load_card(r["path"]).metrics["gate"]
        assert g["passed"] and g["decision_mode"] == "card"
        # The artifact ships the reference's thresholds and was judged under them.
        assert load_card(r["path"]).decision == load_card(run / "model.pt").decision
    fp32 = Path(exported["onnx"]["path"])
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(fp32, copy)
    shutil.copyfile(fp32.with_name(fp32.name + ".card.json"), copy.with_name(copy.name + ".card.json"))
    res = run_gate(copy, run / "model.pt", n_boot=N_BOOT, out_dir=tmp_path / "g")
    assert res.passed and res.comparison["agreement"] == 1.0
    assert all(f["lost"] == 0 for f in res.comparison["flips"].values())
    assert "**pass**" in (tmp_path / "g" / "gate.md").read_text()


def test_copy_with_probabilities_within_0005_passes(ctx: Any, ref: Predictions, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def nudge(model: torch.nn.Module) -> None:  # logit shifts ≤ 0.01 → probabilities move ≤ 0.005
        model.head[-1].bias.add_(torch.from_numpy(rng.uniform(-0.01, 0.01, model.head[-1].bias.shape)).float())

    res = gate_of(artifact(ctx, tmp_path, "nudged", nudge), ctx, ref)
    assert 0 < res.comparison["max_prob_diff"] <= 0.005
    assert res.passed, res.reasons


# -- must FAIL ------------------------------------------------------------------------------------
def test_shipped_all_mel_threshold_fails(exported: dict[str, Any], run: Path, tmp_path: Path) -> None:
    def all_mel(card: Any) -> None:
        card.decision = {**card.decision, "rule": "priority_thresholds", "thresholds": {"MEL": 0.0001}, "priority": ["MEL"]}

    bad = recarded(Path(exported["onnx"]["path"]), tmp_path, "allmel", all_mel)
    res = run_gate(bad, run / "model.pt", n_boot=N_BOOT, out_dir=tmp_path / "g")
    assert not res.passed
    assert res.artifact_decision["thresholds"] == {"MEL": 0.0001}  # judged under what it ships
    assert res.comparison["flips"]["NV"]["lost"] > res.comparison["flips"]["NV"]["budget"]
    assert any(r.startswith("NV: lost") for r in res.reasons)


def test_swapped_class_names_fail(exported: dict[str, Any], run: Path, tmp_path: Path) -> None:
    def swap(card: Any) -> None:
        c = list(card.classes)
        i, j = c.index("MEL"), c.index("NV")
        c[i], c[j] = c[j], c[i]
        card.classes = c

    bad = recarded(Path(exported["onnx"]["path"]), tmp_path, "swapped", swap)
    res = run_gate(bad, run / "model.pt", n_boot=N_BOOT, out_dir=tmp_path / "g")
    assert not res.passed and res.comparison["class_order_differs"]
    assert res.comparison["flips"]["MEL"]["lost"] > 1 and res.comparison["flips"]["NV"]["lost"] > 1
    assert "another order" in res.markdown()


def test_bias_plus_ten_on_one_class_fails(ctx: Any, ref: Predictions, tmp_path: Path) -> None:
    k = ctx.classes.index("BKL")

    def bias(model: torch.nn.Module) -> None:
        model.head[-1].bias[k] += 10.0

    res = gate_of(artifact(ctx, tmp_path, "bias", bias), ctx, ref)
    assert not res.passed
    assert res.comparison["agreement"] < 0.5


def _zero(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.zero_()


def test_zeroed_weights_fail(ctx: Any, ref: Predictions, tmp_path: Path) -> None:
    res = gate_of(artifact(ctx, tmp_path, "zero", _zero), ctx, ref)
    assert not res.passed
    assert any(r.startswith("BACC dropped") for r in res.reasons)
    assert res.artifact_metrics["bacc"]["value"] < res.reference_metrics["bacc"]["value"] - 0.1


def test_collapsed_class_fails(ctx: Any, ref: Predictions, tmp_path: Path) -> None:
    # The class the reference gets right most often, made impossible to predict.
    base = gate_of(ctx.checkpoint, ctx, ref)
    flips = base.comparison["flips"]
    cls = max(ctx.classes, key=lambda c: flips[c]["ref_correct"])
    k = ctx.classes.index(cls)
    assert flips[cls]["ref_correct"] >= 3

    def collapse(model: torch.nn.Module) -> None:
        model.head[-1].bias[k] = -1e4

    res = gate_of(artifact(ctx, tmp_path, "collapse", collapse), ctx, ref)
    assert not res.passed
    assert any(r.startswith(f"{cls}: lost {flips[cls]['ref_correct']} of") for r in res.reasons), res.reasons
    assert res.artifact_metrics[f"sensitivity/{cls}"]["value"] == 0.0


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
    # The same graph without the overflow passes: FP16 rounding alone is fine.
    ok = gate_of(artifact(ctx, tmp_path, "plain16", storage_fp16=True), ctx, ref)
    assert ok.passed and ok.comparison["max_prob_diff"] < 0.05


# -- must exit 2 ----------------------------------------------------------------------------------
def test_baseline_card_with_another_class_list_is_refused(exported: dict[str, Any], run: Path, tmp_path: Path) -> None:
    good = Path(exported["onnx"]["path"])
    card = json.loads((run / "model.pt.card.json").read_text())
    for name, classes in (("six", card["classes"][:6]), ("renamed", ["MELANOMA", *card["classes"][1:]]),
                          ("swapped", [card["classes"][1], card["classes"][0], *card["classes"][2:]])):
        doc = dict(card, classes=classes)
        doc["decision"] = {"rule": "argmax"}
        path = tmp_path / f"{name}.card.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(EdgedermError, match="class list") as e:
            run_gate(good, path, n_boot=N_BOOT, out_dir=tmp_path / name)
        assert e.value.exit_code == 2


def test_too_little_data_is_refused(ctx: Any, ref: Predictions, exported: dict[str, Any]) -> None:
    art = predict(load(exported["onnx"]["path"]), ctx.split("val"))
    five = ref.image_ids[:5]
    with pytest.raises(InsufficientData, match="has 5 images; the gate needs at least 50") as e:
        compare(art.subset(five), ref.subset(five), n_boot=N_BOOT)
    assert e.value.exit_code == 2
    # A class absent from the evaluation images.
    no_df = [i for i, y in zip(ref.image_ids, ref.y) if ctx.classes[y] != "DF"]
    with pytest.raises(InsufficientData, match=r"too few images of DF \(0\)"):
        compare(art.subset(no_df), ref.subset(no_df), n_boot=N_BOOT)
    # Below the class minimum; lowering it explicitly certifies (and records the setting).
    few = [i for i, y in zip(ref.image_ids, ref.y) if ctx.classes[y] != "DF"] + [i for i, y in zip(ref.image_ids, ref.y) if ctx.classes[y] == "DF"][:2]
    with pytest.raises(InsufficientData, match=r"DF \(2\)"):
        compare(art.subset(few), ref.subset(few), n_boot=N_BOOT)
    res = compare(art.subset(few), ref.subset(few), n_boot=N_BOOT, tolerances=Tolerances(min_class_support=2))
    assert res.passed and res.tolerances["min_class_support"] == 2


def test_corrupt_artifacts_are_bad_input(exported: dict[str, Any], run: Path, tmp_path: Path) -> None:
    for key in ("onnx", "tflite"):
        if key not in exported:
            continue
        src = Path(exported[key]["path"])
        bad = tmp_path / f"truncated{src.suffix}"
        bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        with pytest.raises(EdgedermError) as e:
            run_gate(bad, run / "model.pt", n_boot=N_BOOT, out_dir=tmp_path / key)
        assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_gate_cli_exit_codes(exported: dict[str, Any], ctx: Any, run: Path, tmp_path: Path) -> None:
    from edgederm.export.cli import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    good = Path(exported["onnx"]["path"])
    zero = artifact(ctx, tmp_path, "zero", _zero)
    ok = runner.invoke(app, ["gate", str(good), "--baseline", str(run / "model.pt"), "--n-boot", "50", "--out", str(tmp_path / "o1")])
    assert ok.exit_code == 0, ok.output
    assert "**pass**" in ok.output and (tmp_path / "o1" / "gate.json").exists()
    failed = runner.invoke(app, ["gate", str(zero), "--baseline", str(good), "--n-boot", "50", "--out", str(tmp_path / "o2")])
    assert failed.exit_code == 1 and "lost" in failed.output
    missing = runner.invoke(app, ["gate", str(tmp_path / "nope.onnx"), "--baseline", str(good)])
    assert isinstance(missing.exception, EdgedermError) and missing.exception.exit_code == 2
    badtol = runner.invoke(app, ["gate", str(good), "--baseline", str(good), "--tolerance-class", "MEL=x"])
    assert isinstance(badtol.exception, EdgedermError) and badtol.exception.exit_code == 2
    small = runner.invoke(app, ["gate", str(good), "--baseline", str(good), "--min-images", "500"])
    assert isinstance(small.exception, InsufficientData) and small.exception.exit_code == 2


def test_gate_with_no_arguments_is_one_line_exit_2() -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "edgederm", "gate"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


# -- the statistics on known numbers --------------------------------------------------------------
def _mk(name: str, p: np.ndarray, y: np.ndarray, classes: list[str], decision: dict | None = None) -> Predictions:
    return Predictions(name, classes, [f"i{i}" for i in range(len(y))], y, [f"l{i}" for i in range(len(y))], p,
                       decision or {"rule": "argmax"}, ["identity"])


def test_flip_budgets_on_known_numbers() -> None:
    classes = ["MEL", "NV", "BCC", "DF"]
    y = np.array([0] * 40 + [1] * 100 + [2] * 20 + [3] * 4)
    eye = np.eye(4)
    good = eye[y] * 0.8 + 0.2 / 4
    one_df = good.copy()
    one_df[-1] = eye[1] * 0.8 + 0.05  # one of 4 DF lost: 25 pp of its recall, one image
    res = compare(_mk("art", one_df, y, classes), _mk("ref", good, y, classes), n_boot=200)
    assert res.passed, res.reasons  # a single flip is within every class's allowance
    assert res.comparison["flips"]["DF"] == {"n": 4, "ref_correct": 4, "lost": 1, "gained": 0, "budget": 1}
    two_mel = good.copy()
    two_mel[[0, 1]] = eye[1] * 0.8 + 0.05
    res = compare(_mk("art", two_mel, y, classes), _mk("ref", good, y, classes), n_boot=200)
    assert res.reasons == ["MEL: lost 2 of the 40 melanomas the reference calls correctly (gained 0; 40 in the split); allowed 1"]
    # NV's allowance is 5 % of 100 images: 5 lost pass, 6 fail (the BACC margin is widened here:
    # with 4 classes, 5 pp of one class is 1.25 pp of BACC, over the default 1 pp).
    for lost, ok in ((5, True), (6, False)):
        p = good.copy()
        p[40 : 40 + lost] = eye[2] * 0.8 + 0.05
        res = compare(_mk("art", p, y, classes), _mk("ref", good, y, classes), n_boot=200,
                      tolerances=Tolerances(bacc_pp=2, min_agreement=None))
        assert res.passed is ok, res.reasons
    # A diffuse loss — within every class's allowance (1 MEL, 3 NV, 1 BCC, 1 DF) — is caught by
    # BACC: −8.9 pp with a paired CI below 0.
    p = good.copy()
    p[[0, 40, 41, 42, 140, 160]] = eye[[1, 0, 0, 0, 0, 0]] * 0.8 + 0.05
    res = compare(_mk("art", p, y, classes), _mk("ref", good, y, classes), n_boot=500)
    assert [r.split(" (")[0] for r in res.reasons] == ["BACC dropped 8.9 pp", "top-1 agreement with the reference 0.963 < 0.970"], res.reasons
    # A reference that itself gives NaN cannot be a baseline.
    bad = good.copy()
    bad[0] = np.nan
    with pytest.raises(EdgedermError, match="reference"):
        compare(_mk("art", good, y, classes), _mk("ref", bad, y, classes), n_boot=10)


def test_recorded_baseline_card(exported: dict[str, Any], ctx: Any, run: Path, tmp_path: Path) -> None:
    # The run's own card recorded validation metrics under its calibrated thresholds; the FP32
    # ONNX artifact reproduces them on the same split.
    good = Path(exported["onnx"]["path"])
    res = run_gate(good, run / "model.pt.card.json", n_boot=N_BOOT, out_dir=tmp_path / "g1")
    assert res.passed and not res.paired, res.reasons
    assert res.artifact_metrics["bacc"]["value"] == pytest.approx(res.reference_metrics["bacc"]["value"])
    zero = artifact(ctx, tmp_path, "zero", _zero)
    bad = run_gate(zero, run / "model.pt.card.json", n_boot=N_BOOT, out_dir=tmp_path / "g2")
    assert not bad.passed
    with pytest.raises(EdgedermError, match="records no 'all' metrics"):
        run_gate(good, run / "model.pt.card.json", split="all", n_boot=N_BOOT, out_dir=tmp_path / "g3",
                 tolerances=Tolerances(min_class_support=1))
    rb = RecordedBaseline.from_card(load_card(run / "model.pt.card.json"), "val", "card")
    rb.n += 1
    with pytest.raises(EdgedermError, match="not the same evaluation set"):
        compare(predict(load(good), ctx.split("val")), rb, n_boot=10)


# -- label-free fidelity --------------------------------------------------------------------------
def test_clopper_pearson_matches_known_values() -> None:
    lo, hi = clopper_pearson(26, 26)
    assert lo == pytest.approx(0.8677, abs=1e-4) and hi == 1.0
    lo, hi = clopper_pearson(990, 1000)
    assert lo == pytest.approx(0.98165, abs=1e-4) and hi == pytest.approx(0.99520, abs=1e-4)


def test_fidelity_rules_on_known_numbers() -> None:
    classes = ["MEL", "NV"]
    n = 1000
    ref = np.tile([0.2, 0.8], (n, 1))
    ref[:200] = [0.9, 0.1]  # the reference calls 200 melanomas
    mk = lambda name, p: PoolPredictions(name, classes, [f"x{i}" for i in range(n)], p, {"rule": "argmax"})  # noqa: E731
    same = fidelity_check(mk("a", ref.copy()), mk("r", ref), classes, Tolerances())
    assert same["passed"] and same["mel_kept"]["k"] == 200 and same["mel_kept"]["lo"] == pytest.approx(clopper_pearson(200, 200)[0])
    lose = ref.copy()
    lose[:3] = [0.3, 0.7]  # 3 of 200 melanoma calls lost: 98.5 % ≥ 98 %
    assert fidelity_check(mk("a", lose), mk("r", ref), classes, Tolerances())["passed"]
    lose[:5] = [0.3, 0.7]  # 5 lost: 97.5 % < 98 %
    res = fidelity_check(mk("a", lose), mk("r", ref), classes, Tolerances())
    assert not res["passed"] and res["reasons"][0].startswith("fidelity pool: kept 195 of the reference's 200 melanoma calls")
    with pytest.raises(InsufficientData, match="fidelity pool has 1000 readable images; at least 5000"):
        fidelity_check(mk("a", ref), mk("r", ref), classes, Tolerances(min_fidelity_images=5000))


def test_export_with_a_fidelity_pool(run: Path, ctx: Any, tmp_path: Path) -> None:
    # The synthetic data folder holds the training images too: they are left out of the pool.
    data = Path(ctx.card.data["root"])
    [r] = export_run(run, ["onnx-fp16"], out_dir=tmp_path, n_boot=N_BOOT, fidelity_data=data,
                     tolerances=Tolerances(min_fidelity_images=100))
    assert r["status"] == "pass", r.get("reasons")
    fid = r["gate"]["fidelity"]
    n_train = len(ctx.split("train"))
    assert fid["n"] == len(list(data.rglob("*.jpg"))) - n_train
    assert fid["agreement"]["value"] >= 0.98 and fid["agreement"]["lo"] < fid["agreement"]["value"]
    assert "fidelity pool" in (tmp_path / "gate.md").read_text()
