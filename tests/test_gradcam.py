"""Grad-CAM: localisation on models with known evidence, in-place ReLU safety, every registered
model, checkpoint members with their own preprocessing, the lesion-mask energy score on PH2."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import real_data_set
from edgederm.card import ArtifactCard
from edgederm.checkpoint import member_from_model, save_checkpoint
from edgederm.errors import EdgedermError
from edgederm.explain import (
    GradCAM,
    cam_in_mask_report,
    cam_mask_energy,
    cams_for_checkpoint,
    explain_run,
    overlay,
    save_cam_grid,
)
from edgederm.explain.gradcam import _summary
from edgederm.models import create_model, get_model_spec, list_models
from edgederm.preprocess import PreprocessSpec
from edgederm.runtime import load
from helpers import HAM7, randomize_bn, rgb_images, tiny_checkpoint


# -- models whose class evidence is known --------------------------------------------------------
class SquareNet(nn.Module):
    """Class 1 = "a bright patch is present", class 0 = "dark background", by construction.

    conv0 channel 0 fires on bright pixels, channel 1 on dark ones; the target layer ``features.3``
    (a 1x1 conv) is followed by an in-place ReLU, the case naive hooks get wrong.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(2, 2, 1), nn.ReLU(inplace=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            c0 = self.features[0]
            c0.weight.zero_()
            c0.weight[0].fill_(1 / 27)
            c0.weight[1].fill_(-1 / 27)
            c0.bias.copy_(torch.tensor([-0.5, 0.5]))
            c3 = self.features[3]
            c3.weight.copy_(torch.eye(2)[:, :, None, None])
            c3.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class TokenNet(nn.Module):
    """A ViT-shaped toy: patch tokens + a class token; evidence = bright patches (class 1)."""

    num_prefix_tokens = 1

    def __init__(self, patch: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 2, patch, stride=patch)
        self.patch_embed.patch_size = (patch, patch)  # type: ignore[assignment]  # timm's attribute
        self.block = nn.Identity()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.patch_embed.weight.zero_()
            self.patch_embed.weight[0].fill_(1 / (3 * patch * patch))
            self.patch_embed.weight[1].fill_(-1 / (3 * patch * patch))
            self.patch_embed.bias.copy_(torch.tensor([-0.5, 0.5]))
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.patch_embed(x)).flatten(2).transpose(1, 2)  # (N, h*w, C), row-major
        t = self.block(torch.cat([torch.zeros_like(t[:, :1]), t], dim=1))
        return self.fc(t[:, 1:].mean(dim=1))


def square_images(
    n: int, hw: tuple[int, int] = (48, 48), side: int = 12, seed: int = 0, grid: int = 1
) -> tuple[torch.Tensor, np.ndarray]:
    """Dark noisy images with one bright square each (at multiples of ``grid``); + the masks."""
    rng = np.random.default_rng(seed)
    h, w = hw
    x = np.clip(0.1 + 0.05 * rng.standard_normal((n, 3, h, w)), 0, 1).astype(np.float32)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        top = grid * int(rng.integers(0, (h - side) // grid + 1))
        left = grid * int(rng.integers(0, (w - side) // grid + 1))
        x[i, :, top : top + side, left : left + side] = 0.9
        masks[i, top : top + side, left : left + side] = True
    return torch.from_numpy(x), masks


def test_cam_concentrates_on_the_evidence() -> None:
    x, masks = square_images(6)
    model = SquareNet().eval()
    with GradCAM(model, "features.3") as gc:
        bright = gc(x, 1)
        dark = gc(x, 0)
        auto = gc(x)
    assert (model(x).argmax(1) == 0).all()  # mostly dark: class 0 wins, and None picks it
    np.testing.assert_array_equal(gc.last_class_idx, np.zeros(6))
    np.testing.assert_allclose(auto, dark)
    for cam, mask in zip(bright, masks):
        assert cam_mask_energy(cam, mask) > 0.75
        assert mask.flat[cam.argmax()]  # the peak is on the square
    for cam, mask in zip(dark, masks):
        assert cam_mask_energy(cam, mask) < 0.1


def test_vit_tokens_are_put_back_in_their_patches() -> None:
    # A non-square input (32 x 64 -> a 4 x 8 token grid) catches transposed or misordered grids.
    x, masks = square_images(4, hw=(32, 64), side=8, seed=1, grid=8)  # one patch each
    model = TokenNet().eval()
    with GradCAM(model, "block", family="vit") as gc:
        cams = gc(x, 1)
    assert cams.shape == (4, 32, 64)
    for cam, mask in zip(cams, masks):
        assert cam_mask_energy(cam, mask) > 0.5
        assert mask.flat[cam.argmax()]


def _reference_cam(model: nn.Module, x: torch.Tensor, split: int, cls: int) -> np.ndarray:
    """Grad-CAM by hand: run the Sequential in two halves, no hooks, no in-place sharing."""
    with torch.no_grad():
        a = model.features[:split](x)
    a = a.clone().requires_grad_(True)
    logits = model.head(model.features[split:](a.clone()))
    (g,) = torch.autograd.grad(logits[:, cls].sum(), a)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values[:, None, None]
    return (cam / peak).numpy()


@pytest.mark.parametrize("layer, split", [("features.25", 26), ("features.26", 27)])
def test_inplace_relu_after_or_at_target(layer: str, split: int) -> None:
    # small_cnn: features.25 is a BatchNorm followed by ReLU(inplace=True); features.26 is that ReLU.
    torch.manual_seed(0)
    model = randomize_bn(create_model("small_cnn", 3, width=4))
    x = torch.randn(3, 3, 32, 32)
    ref = _reference_cam(model, x, split, cls=2)
    with GradCAM(model, layer) as gc:
        cams = gc(x, 2)
    assert np.isfinite(ref).all() and ref.max() == pytest.approx(1.0)
    np.testing.assert_allclose(cams, ref, atol=1e-5)


def test_shape_range_hooks_modes_and_grads() -> None:
    torch.manual_seed(0)
    model = randomize_bn(create_model("small_cnn", 4, width=4))
    model.train()
    model.features[1].eval()  # a mixed state (e.g. frozen BN) must come back exactly
    modes = [m.training for m in model.modules()]
    for p in model.features[:4].parameters():
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    target = model.get_submodule("features.26")
    before = model.eval()(torch.ones(1, 3, 40, 56)).detach()
    for m, t in zip(model.modules(), modes):
        m.training = t

    with GradCAM(model, "features.26") as gc:
        cams = gc(torch.rand(2, 3, 40, 56), [1, 3])
        assert len(target._forward_hooks) == 1
    assert cams.shape == (2, 40, 56) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    np.testing.assert_array_equal(gc.last_class_idx, [1, 3])
    assert len(target._forward_hooks) == 0 and len(target._backward_hooks) == 0
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model.eval()(torch.ones(1, 3, 40, 56)), before)
    with pytest.raises(RuntimeError, match="closed"):
        gc(torch.rand(1, 3, 40, 56))

    gc2 = GradCAM(model, "features.26")
    with torch.inference_mode():  # callers inside inference mode still get a CAM
        assert gc2(torch.rand(1, 3, 32, 32)).shape == (1, 32, 32)
    gc2.close()
    gc2.close()  # idempotent
    assert len(target._forward_hooks) == 0


def test_bad_arguments() -> None:
    model = SquareNet().eval()
    with pytest.raises(EdgedermError, match="no layer 'nope'"):
        GradCAM(model, "nope")
    with GradCAM(model, "features.3") as gc:
        with pytest.raises(EdgedermError, match="out of range"):
            gc(torch.rand(2, 3, 16, 16), 2)
        with pytest.raises(EdgedermError, match="3 entries for a batch of 2"):
            gc(torch.rand(2, 3, 16, 16), [0, 1, 1])
    with GradCAM(model, "pool") as gc:  # a (N, C, 1, 1) layer still gives a (constant) map
        assert gc(torch.rand(1, 3, 16, 16), 1).shape == (1, 16, 16)


def _kwargs_at(name: str, size: int) -> dict:
    spec = get_model_spec(name)
    kw: dict = {"img_size": size} if spec.family == "vit" else {}
    if "input_size" in inspect.signature(spec.builder).parameters:  # models built for one size
        kw["input_size"] = size
    return kw


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model(name: str) -> None:
    spec = get_model_spec(name)
    torch.manual_seed(0)
    model = create_model(name, 3, **_kwargs_at(name, 64)).eval()
    x = torch.randn(3, 3, 64, 64)
    with GradCAM(model, spec.target_layer, spec.family) as gc:
        cams = gc(x, [0, 1, 2])  # one class per image: one forward/backward for three classes
    assert cams.shape == (3, 64, 64)
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    # A random model has positive evidence for some class somewhere.
    assert cams.reshape(3, -1).max(1).max() == pytest.approx(1.0)


# -- the energy score --------------------------------------------------------------------------------
def test_cam_mask_energy_constructed_cases() -> None:
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:25] = True
    area = mask.mean()
    assert cam_mask_energy(np.ones((20, 30)), mask) == pytest.approx(area)
    assert cam_mask_energy(mask.astype(float), mask) == pytest.approx(1.0)
    assert cam_mask_energy((~mask).astype(float), mask) == pytest.approx(0.0)
    half = mask.astype(float) + 0.5 * (~mask)
    expect = mask.sum() / (mask.sum() + 0.5 * (~mask).sum())
    assert cam_mask_energy(half, mask) == pytest.approx(expect)
    # A 0/255 PIL mask at twice the CAM's resolution is resized (nearest) onto the CAM.
    big = Image.fromarray(np.kron(mask, np.ones((2, 2), bool)).astype(np.uint8) * 255)
    assert cam_mask_energy(mask.astype(float), big) == pytest.approx(1.0)
    assert cam_mask_energy(np.ones((20, 30)), mask.astype(np.uint8)) == pytest.approx(area)
    assert math.isnan(cam_mask_energy(np.zeros((20, 30)), mask))
    with pytest.raises(ValueError):
        cam_mask_energy(-np.ones((20, 30)), mask)


def test_summary_bootstrap() -> None:
    x = np.array([0.2, 0.4, 0.6, 0.8, np.nan])
    s = _summary(x, n_boot=500, seed=0, level=0.95)
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.5) and s["sd"] == pytest.approx(np.std(x[:4], ddof=1))
    assert 0.2 <= s["lo"] < 0.5 < s["hi"] <= 0.8
    assert _summary(x, n_boot=500, seed=0, level=0.95) == s
    assert _summary(np.array([np.nan]), n_boot=10, seed=0, level=0.95)["mean"] is None


# -- pictures ----------------------------------------------------------------------------------------
def test_overlay() -> None:
    img = rgb_images(1, size=(40, 30))[0]
    cam = np.zeros((10, 10), np.float32)
    out = overlay(img, cam, alpha=0.0)
    assert out.size == img.size and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))
    hot = np.asarray(overlay(img, np.ones((10, 10)), alpha=1.0))
    assert (hot[..., 0] > 100).all() and (hot[..., 1:] < 30).all()  # jet(1) is dark red


def test_save_cam_grid(tmp_path: Path) -> None:
    images = rgb_images(2, size=(60, 45))
    specs = [PreprocessSpec(input_size=(32, 32)), PreprocessSpec(input_size=(24, 24), resize="pad")]
    cams = [[np.random.default_rng(i).random((32, 32)) for i in range(2)], [np.ones((24, 24)) * 0.5] * 2]
    mask = np.zeros((45, 60), np.uint8)
    mask[10:30, 15:40] = 255
    path = save_cam_grid(
        tmp_path / "out" / "grid.png", images, cams, ["a", "b"], ["m0", "m1"], specs=specs, masks=[Image.fromarray(mask), None]
    )
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temporary left
    with pytest.raises(ValueError, match="one CAM per image"):
        save_cam_grid(tmp_path / "x.png", images, [cams[0][:1], cams[1]], ["a", "b"], ["m0", "m1"])


# -- checkpoints -------------------------------------------------------------------------------------
def _two_member_checkpoint(path: Path) -> Path:
    """Members with different preprocessing (sizes, resize policy), as the trainer writes them."""
    specs = [PreprocessSpec(input_size=(32, 32)), PreprocessSpec(input_size=(40, 40), resize="stretch")]
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = randomize_bn(create_model("small_cnn", len(HAM7), width=4), seed)
        members.append(member_from_model("small_cnn", model, len(HAM7), width=4))
    card = ArtifactCard(
        name="two",
        classes=list(HAM7),
        taxonomy="ham7",
        preprocessing=specs[0],
        model={"kind": "ensemble", "combine": "weighted_mean", "output": "logits",
               "members": [{"name": "small_cnn", "weight": 0.5, "preprocessing": s.to_dict()} for s in specs]},
    )
    return save_checkpoint(path, members, card)


def test_cams_for_checkpoint_uses_each_members_spec(tmp_path: Path) -> None:
    ckpt = _two_member_checkpoint(tmp_path / "two.pt")
    images = rgb_images(3, size=(60, 45), seed=3)
    pred = load(ckpt)
    result = cams_for_checkpoint(pred, images)
    assert [m.name for m in result] == ["small_cnn", "small_cnn"]
    assert [m.cams.shape for m in result] == [(3, 32, 32), (3, 40, 40)]
    decided = pred.decide(pred.predict_proba(images, tta=False))
    for m, model in zip(result, pred.models):
        np.testing.assert_array_equal(m.class_idx, decided)  # every member explains the decision
        assert m.target_layer == "features.26"
        # Same input as the spec's own batch(): the member's preprocessing, not the card default.
        with GradCAM(model, "features.26") as gc:
            direct = gc(torch.from_numpy(m.spec.batch(images)), decided)
        np.testing.assert_allclose(m.cams, direct, atol=1e-6)
    again = cams_for_checkpoint(ckpt, images, class_idx=[0, 4, 6])  # from the path; given classes
    np.testing.assert_array_equal(again[1].class_idx, [0, 4, 6])
    with pytest.raises(EdgedermError, match="2 entries for 3 images"):
        cams_for_checkpoint(pred, images, class_idx=[0, 1])


def test_cam_in_mask_report_on_ph2(data_root: Path, tmp_path: Path) -> None:
    from edgederm.data.readers import read_dataset

    ph2 = read_dataset(real_data_set(data_root, "ph2"), "ph2")
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", size=32)
    report = cam_in_mask_report(ckpt, ph2, max_images=6, n_boot=300)
    assert report["n_images"] == 6 and report["explained"] == "decision"
    ids = [r["image_id"] for r in report["images"]]
    assert len(set(ids)) == 6 and {r["label"] for r in report["images"]} > {"common_nevus"}  # spread over PH2
    (m,) = report["members"]
    assert m["name"] == "small_cnn" and m["input_size"] == [32, 32]
    e, a, d = m["energy_in_mask"], m["mask_area_fraction"], m["excess_over_chance"]
    assert e["n"] + m["n_degenerate"] == 6
    assert 0 <= e["lo"] <= e["mean"] <= e["hi"] <= 1
    assert 0 < a["mean"] < 1  # PH2 lesions fill part of the frame: the chance level
    assert d["mean"] == pytest.approx(e["mean"] - a["mean"], abs=1e-9) or m["n_degenerate"]
    for r in report["images"]:
        assert 0 < r["mask_area_fraction"][0] < 1
        assert r["energy_in_mask"][0] is None or 0 <= r["energy_in_mask"][0] <= 1
        assert r["explained_class"][0] in HAM7
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN


def test_explain_run_on_ph2(data_root: Path, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", size=32, members=2)
    out = explain_run(ckpt, real_data_set(data_root, "ph2"), "ph2", tmp_path / "explain", n_images=3, max_report_images=4)
    with Image.open(out["gradcam"]) as im:
        im.load()
        assert im.format == "PNG"
    report = json.loads(Path(out["cam_in_mask"]).read_text())
    assert report["n_images"] == 4 and len(report["members"]) == 2
    assert out["n_images"] == 3 and out["members"] == ["small_cnn", "small_cnn"]
