"""Distillation at toy scale: a 2-member small_cnn run as teacher, a small_cnn student."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgederm.card import load_card
from edgederm.checkpoint import load_checkpoint, save_checkpoint
from edgederm.data.readers import read_dataset
from edgederm.data.splits import apply_split, read_split_csv
from edgederm.errors import EdgedermError
from edgederm.evaluate import predict_index
from edgederm.fsutil import sha256_file
from edgederm.models import get_model_spec
from edgederm.runtime import load
from edgederm.train import MemberConfig, TrainConfig, train
from edgederm.train.distill import DistillationLoss, distill, soft_targets, teacher_probabilities
from edgederm.train.losses import build_loss

STUDENT = {"student": "small_cnn", "input_size": 32, "from_scratch": True, "student_kwargs": {"width": 8},
           "batch_size": 16, "lr": 5e-3, "n_boot": 30, "temperature": 3.0, "alpha": 0.6}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgederm.data.synthetic import generate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    data = generate(root / "synthetic", n_lesions=80, size=40, seed=5)
    cfg = TrainConfig(
        name="teacher", data=str(data), format="ham10000", out=str(root / "runs"), n_boot=30, report=False,
        tta=["identity", "hflip", "rot90"],
        thresholds={"targets": [{"class": "MEL", "min_sens": 0.5, "min_spec": 0.5}], "fallbacks": []},
        members=[
            MemberConfig(model="small_cnn", input_size=32, epochs=6, batch_size=16, lr=5e-3, from_scratch=True, kwargs={"width": 8}),
            MemberConfig(model="small_cnn", input_size=24, epochs=6, batch_size=16, lr=5e-3, from_scratch=True, kwargs={"width": 8}),
        ],
    )
    return train(cfg)


@pytest.fixture(scope="module")
def student(teacher_run: Path) -> Path:
    return distill(teacher_run, epochs=3, **STUDENT)


def _splits(run: Path) -> dict:
    card = load_card(run / "model.pt")
    index = read_dataset(card.data["root"], "ham10000", taxonomy="ham7")
    return apply_split(index, read_split_csv(run / "split.csv", index))


def test_kd_loss_is_the_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 4, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(5, 4, generator=g, dtype=torch.float64) * 2, 1)
    y = torch.tensor([0, 3, 1, 1, 2])
    w = torch.tensor([0.5, 2.0, 1.0, 0.5], dtype=torch.float64)
    T, a = 2.5, 0.3
    # By hand (numpy): teacher softened as softmax(log p / T); KL(q || p_s) per row, batch mean.
    pn, sn = p.numpy(), s.numpy()
    q = np.exp(np.log(pn) / T)
    q /= q.sum(1, keepdims=True)
    ls = sn / T - np.log(np.exp(sn / T).sum(1, keepdims=True))
    kl = float((q * (np.log(q) - ls)).sum(1).mean())
    logp = sn - np.log(np.exp(sn).sum(1, keepdims=True))
    wy = w.numpy()[y.numpy()]
    ce = float((wy * -logp[np.arange(5), y.numpy()]).sum() / wy.sum())
    want = a * T * T * kl + (1 - a) * ce
    loss = DistillationLoss(T, a, build_loss("ce", class_weight=w.float()))
    got = loss(s.float(), y, torch.log(p).float())
    assert float(got) == pytest.approx(want, rel=1e-5)
    # alpha = 0 is the weighted CE; T = 1 leaves the teacher's distribution unchanged.
    ce_only = DistillationLoss(T, 0.0, build_loss("ce", class_weight=w.float()))(s.float(), y, torch.log(p).float())
    assert float(ce_only) == pytest.approx(ce, rel=1e-5)
    assert torch.allclose(soft_targets(p, 1.0), p)
    assert soft_targets(p, 4.0).max(1).values.lt(p.max(1).values).all()  # softer
    # The soft term vanishes (value and gradient) when the student matches the teacher.
    st = torch.log(p).float().clone().requires_grad_(True)
    kd = DistillationLoss(T, 1.0, build_loss("ce"))(st, y, torch.log(p).float())
    kd.backward()
    assert abs(float(kd.detach())) < 1e-6 and st.grad.abs().max() < 1e-6
    with pytest.raises(EdgedermError, match="alpha"):
        DistillationLoss(T, 1.5, build_loss("ce"))
    with pytest.raises(EdgedermError, match="temperature"):
        DistillationLoss(0.0, 0.5, build_loss("ce"))


def test_student_card_metrics_and_agreement(teacher_run: Path, student: Path) -> None:
    assert student == teacher_run / "distill-small_cnn"
    for f in ("model.pt", "model.pt.card.json", "metrics.json", "teacher.npz", "history.json",
              "predictions/val.npz", "predictions/test.npz", "distill.json"):
        assert (student / f).exists(), f
    assert not (student / ".model.unscored.pt").exists()
    tcard = load_card(teacher_run / "model.pt")
    card = load_card(student / "model.pt")
    members, _ = load_checkpoint(student / "model.pt")
    assert len(members) == 1 and card.model["kind"] == "single"
    assert card.classes == tcard.classes
    # The student's own preprocessing (registry normalisation at its input size) and one view.
    info = get_model_spec("small_cnn")
    assert card.preprocessing.input_size == (32, 32)
    assert tuple(card.preprocessing.mean) == tuple(info.preprocess.get("mean", card.preprocessing.mean))
    assert card.tta["views"] == ["identity"]
    d = card.model["distillation"]
    t = d["teacher"]
    assert t["sha256"] == sha256_file(teacher_run / "model.pt")
    assert Path(t["path"]) == (teacher_run / "model.pt").resolve()
    assert t["tta_views"] == ["identity", "hflip", "rot90"]
    assert t["metrics"]["test"]["bacc"] == tcard.metrics["test"]["bacc"]
    assert t["metrics"]["val"]["bacc"] == tcard.metrics["val"]["bacc"]
    assert d["temperature"] == 3.0 and d["alpha"] == 0.6
    # Thresholds re-fitted for the student on validation, with the run's targets.
    assert card.decision["targets"] == tcard.decision["targets"]
    splits = _splits(teacher_run)
    assert card.decision["calibrated_on"]["n"] == len(splits["val"])
    # Agreement: recorded, in [0, 1], and what the saved predictions and teacher cache give.
    z = np.load(student / "teacher.npz")
    teacher_of = dict(zip(z["image_ids"], z["probs"]))
    for split in ("val", "test"):
        a = d["teacher_agreement"][split]
        assert 0.0 <= a <= 1.0
        p = np.load(student / "predictions" / f"{split}.npz")
        tp = np.stack([teacher_of[i] for i in p["image_ids"]])
        assert len(set(tp.argmax(1))) > 1  # a teacher that calls one class would make this check empty
        assert a == pytest.approx(float(np.mean(p["probs"].argmax(1) == tp.argmax(1))))
    m = json.loads((student / "metrics.json").read_text())
    assert m["test"]["n"] == len(splits["test"]) and m["val"]["n"] == len(splits["val"])
    bacc = m["test"]["ci"]["bacc"]
    assert bacc["lo"] <= bacc["value"] <= bacc["hi"]
    assert card.metrics["test"]["bacc"]["value"] == bacc["value"]
    assert "clinical" in m and m["teacher_agreement"]["test"] == d["teacher_agreement"]["test"]
    assert "diff" in m["vs_teacher"]["test"]["bacc"]
    # Same split as the run, recorded in the card.
    assert card.data["split_sha256"] == tcard.data["split_sha256"]


def test_student_reloads_and_reproduces_its_test_probabilities(teacher_run: Path, student: Path) -> None:
    test = _splits(teacher_run)["test"]
    kept, _, probs = predict_index(load(student / "model.pt"), test)
    saved = np.load(student / "predictions" / "test.npz")
    assert [r.image_id for r in kept] == list(saved["image_ids"])
    np.testing.assert_allclose(probs, saved["probs"], atol=1e-6)


def test_teacher_cache_is_reused_and_a_changed_teacher_is_not(teacher_run: Path, student: Path, tmp_path: Path) -> None:
    cache = student / "teacher.npz"
    stamp = cache.stat().st_mtime_ns
    before = load_checkpoint(student / "model.pt")[0][0].state_dict
    # Second call (re-scoring the finished distillation): nothing recomputed, same student.
    again = distill(teacher_run, epochs=3, resume=True, **STUDENT)
    assert cache.stat().st_mtime_ns == stamp
    card = load_card(again / "model.pt")
    assert card.model["distillation"]["teacher_cache"]["computed"] == 0
    after = load_checkpoint(again / "model.pt")[0][0].state_dict
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(EdgedermError, match="already holds a finished distillation"):
        distill(teacher_run, epochs=3, **STUDENT)

    # The cache is keyed by the teacher's content: a copy hits it, a changed teacher does not.
    val = _splits(teacher_run)["val"]
    c2 = tmp_path / "t.npz"
    p1, n1 = teacher_probabilities(teacher_run / "model.pt", val, cache=c2)
    assert n1 == len(val)
    shutil.copy(teacher_run / "model.pt", tmp_path / "copy.pt")
    p2, n2 = teacher_probabilities(tmp_path / "copy.pt", val, cache=c2)
    assert n2 == 0 and np.array_equal(p1, p2)
    members, tcard = load_checkpoint(teacher_run / "model.pt")
    tcard.model["members"][0]["weight"], tcard.model["members"][1]["weight"] = 1.0, 0.0
    save_checkpoint(tmp_path / "changed.pt", members, tcard)
    p3, n3 = teacher_probabilities(tmp_path / "changed.pt", val, cache=c2)
    assert n3 == len(val) and not np.allclose(p1, p3)
    # The teacher's views are part of the key too.
    _, n4 = teacher_probabilities(tmp_path / "changed.pt", val, views=["identity"], cache=c2)
    assert n4 == len(val)

    # Resuming a distillation whose teacher changed is refused.
    run2 = tmp_path / "run2"
    run2.mkdir()
    for f in ("recipe.yaml", "split.csv"):
        shutil.copy(teacher_run / f, run2 / f)
    save_checkpoint(run2 / "model.pt", members, tcard)
    (run2 / "distill-small_cnn").mkdir()
    shutil.copy(student / "distill.json", run2 / "distill-small_cnn" / "distill.json")
    with pytest.raises(EdgedermError, match="teacher changed"):
        distill(run2, epochs=3, resume=True, **STUDENT)


def test_resume_ends_where_an_uninterrupted_distillation_ends(teacher_run: Path, student: Path, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def interrupt(name: str, state: dict) -> None:
        if state["epoch"] == 2:
            raise Stop

    out = tmp_path / "b"
    with pytest.raises(Stop):
        distill(teacher_run, epochs=3, out=out, on_epoch_end=interrupt, **STUDENT)
    assert not (out / "model.pt").exists()
    # Training never saw the test split: the teacher was run on train + val only.
    splits = _splits(teacher_run)
    cached = set(np.load(out / "teacher.npz")["image_ids"])
    assert cached == {r.image_id for s in ("train", "val") for r in splits[s]}
    seen: list[int] = []
    distill(teacher_run, epochs=3, out=out, resume=True, on_epoch_end=lambda n, s: seen.append(s["epoch"]), **STUDENT)
    assert seen == [3]
    a = load_checkpoint(student / "model.pt")[0][0].state_dict
    b = load_checkpoint(out / "model.pt")[0][0].state_dict
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(EdgedermError, match="settings differ: temperature"):
        distill(teacher_run, epochs=3, out=out, resume=True, **{**STUDENT, "temperature": 2.0})


def test_bad_arguments_fail_before_any_work(teacher_run: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgedermError, match="no model.pt"):
        distill(tmp_path)
    with pytest.raises(EdgedermError, match="unknown model"):
        distill(teacher_run, student="efficientnet_lite9")
    with pytest.raises(EdgedermError, match="no pretrained weights"):
        distill(teacher_run, student="small_cnn")
    with pytest.raises(EdgedermError, match="alpha"):
        distill(teacher_run, **{**STUDENT, "alpha": -0.1})
    with pytest.raises(EdgedermError, match="unknown TTA views"):
        distill(teacher_run, student_tta=["identity", "spin"], **STUDENT)
    assert not (teacher_run / "distill-efficientnet_lite9").exists()


def test_cli_command(teacher_run: Path, student: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from edgederm.train.distill import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:  # a second command keeps typer from collapsing the app into `distill`
        pass

    runner = CliRunner()
    res = runner.invoke(app, ["distill", "--help"])
    assert res.exit_code == 0
    for opt in ("--student", "--input-size", "--temperature", "--alpha", "--no-teacher-tta", "--from-scratch", "--resume"):
        assert opt in res.output, opt
    # Re-score the finished student through the command (same settings as the fixture).
    args = ["distill", str(teacher_run), "--student", "small_cnn", "--input-size", "32", "--epochs", "3",
            "--from-scratch", "--model-arg", "width=8", "--batch-size", "16", "--lr", "0.005",
            "--temperature", "3", "--alpha", "0.6", "--resume"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "agreement with the teacher" in res.output and "bacc" in res.output
    res = runner.invoke(app, args[:-1] + ["--temperature", "2"])
    assert isinstance(res.exception, EdgedermError)
