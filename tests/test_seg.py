"""Lesion segmentation: Attention U-Net, paired augmentation, PH2 training, segment-then-classify."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgederm.card import validate
from edgederm.checkpoint import load_checkpoint
from edgederm.data.records import Record
from edgederm.errors import DataError, EdgedermError
from edgederm.seg import (
    AttentionGate,
    AttentionUNet,
    LesionSegmenter,
    SegAugment,
    SegConfig,
    SegDataset,
    load_mask,
    load_seg_recipe,
    load_segmenter,
    mask_scores,
    predict_mask,
    segment_lesion,
    train_segmenter,
)
from edgederm.seg.apply import largest_component, lesion_box
from edgederm.seg.train import bootstrap_mean_ci, ellipse_mask, fit_ellipse_scale

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- model

def test_unet_shapes_and_attention_maps() -> None:
    torch.manual_seed(0)
    model = AttentionUNet(in_ch=3, out_ch=2, base=4, depth=3).eval()
    x = torch.randn(2, 3, 40, 56)  # divisible by 2**3, not square
    with torch.no_grad():
        logits, alphas = model(x, return_attention=True)
        assert torch.equal(model(x), logits)
    assert logits.shape == (2, 2, 40, 56)
    assert [a.shape for a in alphas] == [(2, 1, 40, 56), (2, 1, 20, 28), (2, 1, 10, 14)]
    for a in alphas:
        assert float(a.min()) > 0.0 and float(a.max()) < 1.0
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 3, 36, 40))


def test_attention_gate_multiplies_skip_by_coefficients_from_gating_signal() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(x_ch=6, g_ch=10, inter_ch=4)
    x = torch.randn(2, 6, 16, 16)
    g1, g2 = torch.randn(2, 10, 8, 8), torch.randn(2, 10, 8, 8)
    out, alpha = gate(x, g1)
    assert out.shape == x.shape and alpha.shape == (2, 1, 16, 16)
    assert torch.allclose(out, x * alpha)
    # The coefficients depend on the gating signal (not only on x) ...
    assert not torch.allclose(gate(x, g2)[1], alpha)
    # ... and the gate is trained through the segmentation loss.
    model = AttentionUNet(base=4, depth=2)
    model(torch.randn(2, 3, 16, 16)).mean().backward()
    for level in model.decoders:
        assert level.gate.psi.weight.grad is not None and level.gate.psi.weight.grad.abs().sum() > 0
        assert level.gate.phi_g.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ augmentation

def _synthetic_pair(tmp_path: Path, name: str = "a") -> Record:
    """A 'dermoscopy' image whose lesion is exactly the mask: an off-centre, asymmetric bright
    blob on dark skin (the rotation's black fill then reads as background, like the mask's)."""
    h, w = 90, 120
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (((yy - 30) / 18.0) ** 2 + ((xx - 40) / 28.0) ** 2 <= 1.0) | ((yy > 50) & (yy < 80) & (xx > 80) & (xx < 95))
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (120, 60, 50)
    img[mask] = (250, 235, 220)
    ip, mp = tmp_path / f"{name}.png", tmp_path / f"{name}_mask.png"
    Image.fromarray(img).save(ip)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mp)
    return Record(image_id=name, ref=str(ip), label="x", mask_ref=str(mp))


def test_paired_augmentation_keeps_image_and_mask_aligned(tmp_path: Path) -> None:
    rec = _synthetic_pair(tmp_path)
    ds = SegDataset([rec], 64, augment=True)
    plain = SegDataset([rec], 64, augment=False)[0][1][0].bool()
    mean = torch.tensor(ds.spec.mean).view(3, 1, 1)
    std = torch.tensor(ds.spec.std).view(3, 1, 1)
    torch.manual_seed(0)
    moved = 0
    for _ in range(25):
        x, m = ds[0]
        assert x.shape == (3, 64, 64) and m.shape == (1, 64, 64)
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        rgb = (x * std + mean).mean(0)  # back to [0, 1] brightness
        bright = rgb > 0.6
        mb = m[0].bool()
        iou = (bright & mb).sum() / (bright | mb).sum()
        assert iou > 0.9, f"image and mask drifted apart (IoU {float(iou):.3f})"
        moved += int((mb ^ plain).float().mean() > 0.05)
    # The geometry really was random (a test passing because nothing moved would prove nothing).
    assert moved >= 15


def test_colour_jitter_touches_the_image_only() -> None:
    torch.manual_seed(1)
    img = torch.rand(3, 32, 32)
    mask = (torch.rand(1, 32, 32) > 0.5).float()
    aug = SegAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate_p=0.0, jitter=(0.5, 0.5, 0.5, 0.1))
    out_img, out_mask = aug(img, mask)
    flipped = [mask, mask.flip(-1), mask.flip(-2), mask.flip(-1).flip(-2)]
    assert any(torch.equal(out_mask, f) for f in flipped)
    geo = [img, img.flip(-1), img.flip(-2), img.flip(-1).flip(-2)]
    assert not any(torch.allclose(out_img, g, atol=1e-3) for g in geo)


def test_masks_are_binarised_and_checked_against_the_image(tmp_path: Path) -> None:
    m = np.zeros((20, 30), np.uint8)
    m[5:15, 5:20] = 200
    m[0, 0] = 90  # JPEG-like grey noise is background
    Image.fromarray(m).save(tmp_path / "m.png")
    out = load_mask(str(tmp_path / "m.png"), (30, 20))
    assert out.dtype == bool and out.sum() == 10 * 15 and not out[0, 0]
    assert load_mask(str(tmp_path / "m.png"), (60, 40)).sum() == pytest.approx(4 * 150, rel=0.1)  # same aspect: resized
    with pytest.raises(DataError, match="aspect ratio"):
        load_mask(str(tmp_path / "m.png"), (30, 30))
    with pytest.raises(DataError, match="no lesion mask"):
        SegDataset([Record(image_id="a", ref=str(tmp_path / "m.png"), label="x")], 16)


# ----------------------------------------------------------------------------------- metrics

def test_mask_scores_and_bootstrap() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True  # 50 px
    b[:, 2:6] = True  # 40 px, 30 shared
    iou, dice = mask_scores(a, b)
    assert iou == pytest.approx(30 / 60) and dice == pytest.approx(60 / 90)
    assert mask_scores(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == (1.0, 1.0)
    assert mask_scores(a, np.zeros((10, 10), bool)) == (0.0, 0.0)
    ci = bootstrap_mean_ci([0.2, 0.4, 0.6, 0.8], n_boot=500, seed=0)
    assert ci["value"] == pytest.approx(0.5) and 0.2 <= ci["lo"] < 0.5 < ci["hi"] <= 0.8 and ci["n"] == 4
    assert bootstrap_mean_ci([0.2, 0.4, 0.6, 0.8], n_boot=500, seed=0) == ci


def test_ellipse_baseline_fits_the_typical_lesion_size() -> None:
    e = ellipse_mask((100, 200), 0.5)
    assert e[50, 100] and not e[0, 0] and e.sum() == pytest.approx(np.pi * 25 * 50, rel=0.03)
    masks = [ellipse_mask((60, 80), 0.6), ellipse_mask((80, 60), 0.6)]
    assert fit_ellipse_scale(masks) == pytest.approx(0.6)


# ------------------------------------------------------------------------ training on PH2

@pytest.fixture(scope="module")
def tiny_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from conftest import real_data_set

    ph2 = real_data_set(data_root, "ph2")
    out = tmp_path_factory.mktemp("segrun")
    # 40 training images at 64 px, a width-8 network, 10 epochs: ~10 s of training on 1 core.
    cfg = SegConfig(data=str(ph2), out=str(out), name="tiny", size=64, base=8, epochs=10, batch_size=8,
                    lr=3e-3, max_train=40, n_boot=300, n_overlay=4, threads=1, seed=0)
    return train_segmenter(cfg)


@pytest.mark.realdata
@pytest.mark.slow
def test_tiny_ph2_training_beats_the_all_foreground_baseline(tiny_run: dict) -> None:
    t = tiny_run["test"]
    assert tiny_run["counts"]["train"] == 40 and t["n"] == tiny_run["counts"]["test"] >= 30
    fg = t["baselines"]["all_foreground"]["dice"]["value"]
    dice = t["model"]["dice"]
    # PH2 lesions cover ~1/3 of the image, so predicting "all lesion" scores Dice ~0.48; a model
    # that learnt nothing cannot clear it with its whole CI.
    assert dice["lo"] > fg + 0.05, (dice, fg)
    assert t["model"]["iou"]["value"] < dice["value"]  # IoU <= Dice per image
    assert len(t["per_image"]) == t["n"]
    run = Path(tiny_run["run_dir"])
    for name in ("model.pt", "model.pt.card.json", "metrics.json", "overlays.png", "split.csv", "recipe.yaml", "best.pt"):
        assert (run / name).exists(), name
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] == t["n"]
    with Image.open(run / "overlays.png") as grid:
        assert grid.width > 3 * 64 and grid.height >= 4 * 160


@pytest.mark.realdata
@pytest.mark.slow
def test_segmentation_checkpoint_round_trip(tiny_run: dict, data_root: Path) -> None:
    path = Path(tiny_run["checkpoint"])
    members, card = load_checkpoint(path)
    assert card.task == "segmentation" and card.classes == ["lesion"]
    validate(card.to_dict())
    assert card.metrics["test"]["dice"]["value"] == pytest.approx(tiny_run["test"]["model"]["dice"]["value"])
    assert card.data["fingerprint"] == tiny_run["fingerprint"]
    model, size = load_segmenter(path)
    assert size == 64 and not model.training
    # Same weights as the best epoch saved during training.
    best = torch.load(Path(tiny_run["run_dir"]) / "best.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k
    # The reloaded model reproduces the reported test score of the first test image.
    from edgederm.data.readers import read_dataset
    from edgederm.seg import load_pair

    first = tiny_run["test"]["per_image"][0]
    idx = read_dataset(str(data_root / "ph2"), "ph2")
    rec = next(r for r in idx.records if r.image_id == first["image_id"])
    img, true = load_pair(rec)
    pred = predict_mask(model, img, size)
    assert pred.shape == (img.height, img.width) and pred.dtype == bool
    assert mask_scores(pred, true)[1] == pytest.approx(first["dice"], abs=1e-9)
    # The transform the classifier pipeline uses.
    seg = LesionSegmenter(path, mode="crop", margin=0.1)
    assert np.array_equal(seg.mask(img), pred)
    out = seg(img)
    assert np.array_equal(np.asarray(out), np.asarray(segment_lesion(img, pred, "crop", 0.1)))
    assert out.width == out.height <= round(1.2 * max(img.size)) + 1  # box <= image, +10% a side


def test_load_segmenter_refuses_a_classifier(tmp_path: Path) -> None:
    from helpers import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "clf.pt", size=32)
    with pytest.raises(EdgedermError, match="classification checkpoint, not a segmentation model"):
        load_segmenter(path)


def test_train_refuses_an_existing_run(tmp_path: Path) -> None:
    run = tmp_path / "x"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")
    with pytest.raises(EdgedermError, match="already holds a finished run"):
        train_segmenter(SegConfig(data=str(tmp_path), out=str(tmp_path), name="x", size=32, base=4, depth=2))


# ------------------------------------------------------------------------------------ recipe

def test_recipe_loads_and_refuses_unknown_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDERM_DATA", "/data/here")
    cfg = load_seg_recipe(REPO / "train" / "ph2-attention-unet.yaml")
    assert cfg.data == "/data/here/ph2" and cfg.size == 128 and cfg.base == 16 and cfg.format == "ph2"
    assert load_seg_recipe(REPO / "train" / "ph2-attention-unet.yaml", epochs=2, out="/tmp/o").epochs == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nsize: 128\nepoch: 3\n")
    with pytest.raises(EdgedermError) as e:
        load_seg_recipe(bad)
    assert "unknown keys ['epoch']" in str(e.value) and "\n" not in str(e.value)
    bad.write_text("data: x\nsize: 100\n")
    with pytest.raises(EdgedermError, match="multiple of 2\\*\\*depth = 16"):
        load_seg_recipe(bad)
    monkeypatch.delenv("EDGEDERM_DATA")
    with pytest.raises(EdgedermError, match="environment variable that is not set"):
        load_seg_recipe(REPO / "train" / "ph2-attention-unet.yaml")


# ------------------------------------------------------------------------- segment_lesion

def _scene() -> tuple[Image.Image, np.ndarray]:
    """Skin (200, 150, 130) with black vignette corners, a dark lesion and a stray speck."""
    h, w = 100, 160
    arr = np.zeros((h, w, 3), np.uint8)
    arr[...] = (200, 150, 130)
    arr[:10, :10] = 0  # vignette: must not darken the skin estimate
    mask = np.zeros((h, w), bool)
    mask[30:60, 50:110] = True  # lesion: 60 wide, 30 tall
    arr[mask] = (60, 40, 30)
    mask[90:93, 5:8] = True  # a speck the segmenter got wrong (skin underneath)
    return Image.fromarray(arr), mask


def test_segment_lesion_mask_mode_uses_the_skin_colour() -> None:
    img, mask = _scene()
    out = np.asarray(segment_lesion(img, mask, "mask"))
    assert out.shape == (100, 160, 3)
    assert (out[30:60, 50:110] == (60, 40, 30)).all()  # lesion untouched
    assert (out[0, 0] == (200, 150, 130)).all()  # vignette and background -> this image's skin
    assert (out[91, 6] == (200, 150, 130)).all()  # the speck is not lesion: largest component only
    black = np.asarray(segment_lesion(img, mask, "mask", background="black"))
    assert (black[0, 0] == 0).all() and (black[20, 20] == 0).all() and (black[40, 60] == (60, 40, 30)).all()


def test_segment_lesion_crop_is_square_with_margin_around_the_largest_component() -> None:
    img, mask = _scene()
    out = segment_lesion(img, mask, "crop", margin=0.1)
    # 60 x 30 box + 10% per side -> 72 x 36 -> square 72, still inside the 160 x 100 image
    assert out.size == (72, 72)
    assert lesion_box(largest_component(mask), 0.1) == (44, 9, 116, 81)
    assert np.array_equal(np.asarray(out), np.asarray(img)[9:81, 44:116])
    both = np.asarray(segment_lesion(img, mask, "mask+crop", margin=0.1))
    assert both.shape == (72, 72, 3) and (both[0, 0] == (200, 150, 130)).all() and (both[36, 36] == (60, 40, 30)).all()


def test_segment_lesion_crop_larger_than_the_image_is_padded() -> None:
    img, _ = _scene()
    mask = np.zeros((100, 160), bool)
    mask[5:95, 40:120] = True  # 80 wide, 90 tall; + 25% margins -> 135 > image height
    out = segment_lesion(img, mask, "crop", margin=0.25)
    assert out.size == (135, 135)
    arr = np.asarray(out)
    assert (arr[0, 67] == (200, 150, 130)).all()  # padding in the skin colour
    assert (arr[67, 67] == (60, 40, 30)).all()  # canvas (67, 67) = image (49, 79): the dark lesion


def test_segment_lesion_empty_mask_returns_the_image(caplog: pytest.LogCaptureFixture) -> None:
    img, _ = _scene()
    with caplog.at_level(logging.WARNING, logger="edgederm.seg.apply"):
        out = segment_lesion(img, np.zeros((100, 160), bool), "mask+crop")
    assert np.array_equal(np.asarray(out), np.asarray(img))
    assert any("empty lesion mask" in r.getMessage() for r in caplog.records)


def test_segment_lesion_accepts_mask_forms_and_rejects_bad_modes() -> None:
    img, mask = _scene()
    ref = np.asarray(segment_lesion(img, mask, "crop"))
    as_png = Image.fromarray(mask.astype(np.uint8) * 255)
    assert np.array_equal(np.asarray(segment_lesion(img, as_png, "crop")), ref)
    assert np.array_equal(np.asarray(segment_lesion(img, mask.astype(np.float32), "crop")), ref)
    # A mask at the network's resolution (same aspect ratio) is resized to the image.
    small = np.asarray(as_png.resize((80, 50), Image.Resampling.NEAREST)) > 127
    assert segment_lesion(img, small, "crop").size == (72, 72)
    with pytest.raises(EdgedermError, match="unknown segmentation mode 'box'"):
        segment_lesion(img, mask, "box")  # type: ignore[arg-type]
    with pytest.raises(EdgedermError, match="unknown background"):
        segment_lesion(img, mask, background="white")  # type: ignore[arg-type]


@pytest.mark.realdata
@pytest.mark.slow
def test_segment_then_classify_through_the_card(tiny_run: dict, data_root: Path, tmp_path: Path) -> None:
    """The classifier trains on segmented lesions; the card records the segmenter and the runtime
    applies it, so predictions on raw images match the run's recorded test predictions."""
    import shutil

    from edgederm.card import load_card
    from edgederm.data.readers import read_dataset
    from edgederm.runtime import load
    from edgederm.train import MemberConfig, TrainConfig, train

    seg_ckpt = tmp_path / "seg.pt"
    shutil.copy(tiny_run["checkpoint"], seg_ckpt)
    shutil.copy(str(tiny_run["checkpoint"]) + ".card.json", str(seg_ckpt) + ".card.json")
    cfg = TrainConfig(
        name="seg-clf", data=str(data_root / "ph2"), format="ph2", taxonomy=None, out=str(tmp_path), n_boot=30,
        tta=["identity"], report=False, val=0.2, test=0.2, segment={"checkpoint": str(seg_ckpt), "mode": "crop", "margin": 0.1},
        members=[MemberConfig(model="small_cnn", input_size=32, epochs=1, batch_size=16, kwargs={"width": 4})],
    )
    run = train(cfg)
    card = load_card(run / "model.pt.card.json")
    entry = card.model["segmenter"]
    assert entry["mode"] == "crop" and len(entry["sha256"]) == 64
    saved = np.load(run / "predictions" / "test.npz")
    index = read_dataset(data_root / "ph2", "ph2")
    paths = {r.image_id: r.ref for r in index.records}
    ids = [str(i) for i in saved["image_ids"][:6]]
    pred = load(run / "model.pt")
    assert np.allclose(pred.predict_proba([paths[i] for i in ids]), saved["probs"][:6], atol=1e-6)
    # A segmenter that changed since training is refused, not silently used.
    seg_ckpt.write_bytes(seg_ckpt.read_bytes() + b"x")
    with pytest.raises(EdgedermError, match="SHA-256 mismatch"):
        load(run / "model.pt").predict_proba([paths[ids[0]]])
