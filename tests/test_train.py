"""Training at toy scale on the synthetic data set: run folder, card, runtime reload, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgederm.card import load_card
from edgederm.checkpoint import load_checkpoint
from edgederm.data.readers import read_dataset
from edgederm.data.splits import apply_split, read_split_csv
from edgederm.errors import EdgedermError
from edgederm.evaluate import evaluate
from edgederm.runtime import load
from edgederm.train import MemberConfig, TrainConfig, load_recipe, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgederm.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "synthetic", n_lesions=70, size=48, seed=3)


def _cfg(data: Path, out: Path, name: str, epochs: int = 2, members: int = 2) -> TrainConfig:
    cfg = TrainConfig(
        name=name,
        data=str(data),
        format="ham10000",
        out=str(out),
        n_boot=50,
        tta=["identity", "hflip"],
        members=[
            MemberConfig(model="small_cnn", input_size=32, epochs=epochs, batch_size=16, lr=3e-3, kwargs={"width": 4}),
            MemberConfig(model="small_cnn", input_size=24, epochs=epochs, batch_size=16, lr=3e-3, kwargs={"width": 4}),
        ],
    )
    cfg.members = cfg.members[:members]
    return cfg


def test_toy_run_writes_everything_and_reloads(synth: Path, tmp_path: Path) -> None:
    run = train(_cfg(synth, tmp_path, "toy"))
    for f in ("model.pt", "model.pt.card.json", "metrics.json", "split.csv", "recipe.yaml"):
        assert (run / f).exists(), f
    assert not (run / ".model.unscored.pt").exists()
    card = load_card(run / "model.pt.card.json")
    assert card.classes == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert card.model["kind"] == "ensemble" and len(card.model["members"]) == 2
    assert abs(sum(m["weight"] for m in card.model["members"]) - 1) < 1e-9
    assert card.tta["views"] == ["identity", "hflip"]
    assert card.artifact["sha256"] and card.data["fingerprint"]
    bacc = card.metrics["test"]["bacc"]
    assert bacc["lo"] <= bacc["value"] <= bacc["hi"]
    # The numbers in metrics.json are what the runtime gives when run again by hand.
    metrics = json.loads((run / "metrics.json").read_text())
    index = read_dataset(synth, "ham10000", taxonomy="ham7")
    test = apply_split(index, read_split_csv(run / "split.csv", index))["test"]
    again = evaluate(load(run / "model.pt"), test, n_boot=50, seed=42)
    assert again.report["bacc"] == pytest.approx(metrics["test"]["metrics"]["bacc"], abs=1e-12)
    # Splits are lesion-disjoint.
    parts = apply_split(index, read_split_csv(run / "split.csv", index))
    seen = [{r.group for r in parts[s]} for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    with pytest.raises(EdgedermError, match="already holds a finished run"):
        train(_cfg(synth, tmp_path, "toy"))


def test_resume_ends_where_an_uninterrupted_run_ends(synth: Path, tmp_path: Path) -> None:
    full = train(_cfg(synth, tmp_path / "a", "r", epochs=3, members=1))

    class Stop(Exception):
        pass

    def interrupt(name: str, state: dict) -> None:
        if state["epoch"] == 2 and not hasattr(interrupt, "fired"):
            interrupt.fired = True  # type: ignore[attr-defined]
            raise Stop

    with pytest.raises(Stop):
        train(_cfg(synth, tmp_path / "b", "r", epochs=3, members=1), on_epoch_end=interrupt)
    assert not (tmp_path / "b" / "r" / "model.pt").exists()
    [last] = (tmp_path / "b" / "r" / "members").rglob("last.pt")
    assert torch.load(last, map_location="cpu", weights_only=True)["state"]["epoch"] == 2  # plain values only
    seen: list[int] = []
    resumed = train(_cfg(synth, tmp_path / "b", "r", epochs=3, members=1), resume=True,
                    on_epoch_end=lambda name, state: seen.append(state["epoch"]))
    assert seen == [3]  # it continued from the saved epoch instead of starting over
    ma, _ = load_checkpoint(full / "model.pt")
    mb, _ = load_checkpoint(resumed / "model.pt")
    for a, b in zip(ma, mb):
        for k in a.state_dict:
            assert torch.equal(a.state_dict[k], b.state_dict[k]), k


class _Opens:
    """Unpickling this calls open(path, "w"): the file appears if the pickle is ever executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_resume_state_loads_weights_only(synth: Path, tmp_path: Path) -> None:
    import random

    import numpy as np

    from edgederm.train.loop import load_resume_state

    class Stop(Exception):
        pass

    def stop(name: str, state: dict) -> None:
        raise Stop

    cfg = _cfg(synth, tmp_path, "r", epochs=2, members=1)
    with pytest.raises(Stop):
        train(cfg, on_epoch_end=stop)
    [last] = (tmp_path / "r" / "members").rglob("last.pt")
    saved = load_resume_state(last)

    # A state written before the RNG state was stored as plain values: NumPy's key array is an
    # ndarray. It loads (only the NumPy array types are allowed) and gives the same RNG state.
    kind, keys, pos, has_gauss, cached = saved["np_rng"]
    old = {**saved, "np_rng": (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)}
    torch.save(old, last)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(last, weights_only=True)
    again = load_resume_state(last)
    np.random.set_state(tuple(again["np_rng"]))
    a = np.random.rand(4)
    np.random.set_state(tuple(saved["np_rng"]))
    assert np.array_equal(a, np.random.rand(4)) and again["state"] == saved["state"]
    random.setstate(again["py_rng"])

    # A pickle that would run code is refused with one line, and is not run.
    marker = tmp_path / "pickle-was-executed"
    torch.save({**saved, "state": _Opens(marker)}, last)
    with pytest.raises(EdgedermError, match="restart without --resume") as err:
        train(cfg, resume=True)
    assert "would call io.open" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    last.write_bytes(b"not a torch file")
    with pytest.raises(EdgedermError, match="unreadable training state"):
        load_resume_state(last)


def test_recipes_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEDERM_DATA", raising=False)
    with pytest.raises(EdgedermError, match="unset environment variable"):
        load_recipe(REPO / "train" / "cpu-quickstart.yaml")
    monkeypatch.setenv("EDGEDERM_DATA", str(tmp_path))
    for recipe in sorted((REPO / "train").glob("*.yaml")):
        if "unet" in recipe.name:
            continue  # a segmentation recipe (edgederm segment), tested in test_seg.py
        cfg = load_recipe(recipe)
        assert cfg.members, recipe
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: y\nmembers: [{model: small_cnn, epochz: 3}]\n")
    with pytest.raises(EdgedermError, match="unknown keys"):
        load_recipe(bad)
