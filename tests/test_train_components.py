"""Training components: focal loss and class weights, samplers, per-class augmentation tiers."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import real_data_set
from edgederm.data.images import load_image
from edgederm.data.taxonomy import HAM7, normalize_label
from edgederm.errors import EdgedermError
from edgederm.train.augment import (
    DEFAULT_TIERS,
    TierConfig,
    assign_tiers,
    basic_augment,
    build_class_augment,
    build_tier_transform,
    imbalance_ratios,
)
from edgederm.train.losses import FocalLoss, build_loss, class_weights
from edgederm.train.sampling import balanced_sampler, describe_sampling, oversample_indices

from helpers import rgb_images


# -- losses -------------------------------------------------------------------------------------
def _batch(n: int = 64, c: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_gamma0_is_cross_entropy(smoothing: float, weighted: bool, reduction: str) -> None:
    logits, y = _batch()
    # Uneven weights, so the weighted-mean normalisation (by sum of w[y], not N) matters.
    w = torch.tensor([0.2, 3.0, 1.0, 0.5, 7.0, 1.5, 0.05]) if weighted else None
    ce = nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing, reduction=reduction)
    fl = FocalLoss(gamma=0.0, weight=w, label_smoothing=smoothing, reduction=reduction)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    lc, lf = ce(a, y), fl(b, y)
    torch.testing.assert_close(lf, lc, rtol=1e-6, atol=1e-6)
    lc.sum().backward()
    lf.sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)


def test_weighted_mean_is_not_the_plain_mean() -> None:
    # Guards the test above: with these weights the two normalisations differ clearly.
    logits, y = _batch()
    w = torch.tensor([0.2, 3.0, 1.0, 0.5, 7.0, 1.5, 0.05])
    per = FocalLoss(gamma=0.0, weight=w, reduction="none")(logits, y)
    assert not math.isclose(per.mean().item(), FocalLoss(gamma=0.0, weight=w)(logits, y).item(), rel_tol=1e-3)


def test_focal_matches_closed_form() -> None:
    logits, y = _batch(n=16, c=4, seed=3)
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    p = torch.softmax(logits.double(), 1)
    pt = p[torch.arange(16), y]
    expected = (w[y].double() * (1 - pt) ** 2 * -torch.log(pt)).sum() / w[y].double().sum()
    got = FocalLoss(gamma=2.0, weight=w)(logits, y)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # With smoothing: soft targets (1-eps)*onehot + eps/C, each class term modulated by (1-p_c)^gamma.
    eps = 0.2
    q = torch.full_like(p, eps / 4)
    q[torch.arange(16), y] += 1 - eps
    per = (w.double() * q * (1 - p) ** 2 * -torch.log(p)).sum(1)
    got = FocalLoss(gamma=2.0, weight=w, label_smoothing=eps)(logits, y)
    assert got.item() == pytest.approx((per.sum() / w[y].double().sum()).item(), rel=1e-5)


def test_focal_down_weights_easy_examples() -> None:
    logits = torch.tensor([[6.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 2.0, 0.0]])  # easy, hard, wrong
    y = torch.tensor([0, 0, 0])
    focal = FocalLoss(gamma=2.0, reduction="none")(logits, y)
    ce = nn.CrossEntropyLoss(reduction="none")(logits, y)
    ratio = focal / ce
    assert (ratio <= 1).all()
    assert ratio[0] < 0.01 < ratio[1] < ratio[2]
    # Larger gamma focuses harder.
    r5 = FocalLoss(gamma=5.0, reduction="none")(logits, y) / ce
    assert r5[0] < ratio[0] and r5[1] < ratio[1]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_gradient_finite_for_extreme_logits(gamma: float, smoothing: float) -> None:
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [80.0, 80.0, -80.0], [0.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 2])  # certain-right, certain-wrong, tie, uniform
    w = torch.tensor([1.0, 2.0, 0.5])
    loss = FocalLoss(gamma=gamma, weight=w, label_smoothing=smoothing)(logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert loss.item() > 100  # the certain-wrong sample dominates, it is not lost to clamping


def test_focal_half_precision_logits_and_buffer() -> None:
    logits, y = _batch(n=8, c=3)
    fl = FocalLoss(weight=torch.ones(3))
    assert "weight" in dict(fl.named_buffers())
    assert fl(logits.half(), y).dtype == torch.float32


def test_build_loss() -> None:
    w = torch.tensor([1.0, 2.0, 3.0])
    ce = build_loss("ce", class_weight=w, label_smoothing=0.1)
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.label_smoothing == 0.1
    fl = build_loss("focal", gamma=1.5, class_weight=w)
    assert isinstance(fl, FocalLoss) and fl.gamma == 1.5 and torch.equal(fl.weight, w)
    bad_calls = (
        lambda: build_loss("hinge"),
        lambda: build_loss("focal", gamma=-1.0),
        lambda: build_loss("ce", label_smoothing=1.0),
    )
    for bad in bad_calls:
        with pytest.raises(EdgedermError) as e:
            bad()
        assert "\n" not in str(e.value)


def test_class_weight_schemes_on_known_counts() -> None:
    targets = [0] * 100 + [1] * 25 + [3] * 4  # class 2 absent
    inv = class_weights(targets, 4, "inverse")
    raw = np.array([1 / 100, 1 / 25, 0, 1 / 4])
    np.testing.assert_allclose(inv.numpy(), raw / raw[[0, 1, 3]].mean(), rtol=1e-6)
    assert inv.dtype == torch.float32 and inv[2] == 0
    assert inv[[0, 1, 3]].mean().item() == pytest.approx(1.0)

    sq = class_weights(targets, 4, "sqrt_inverse")
    raw = np.array([0.1, 0.2, 0, 0.5])
    np.testing.assert_allclose(sq.numpy(), raw / raw[[0, 1, 3]].mean(), rtol=1e-6)

    beta = 0.99
    en = class_weights(targets, 4, "effective_number", beta=beta)
    raw = np.array([(1 - beta) / (1 - beta**n) if n else 0 for n in (100, 25, 0, 4)])
    np.testing.assert_allclose(en.numpy(), raw / raw[[0, 1, 3]].mean(), rtol=1e-6)
    # Effective number sits between equal weights and inverse frequency.
    assert inv[3] / inv[0] > en[3] / en[0] > 1
    # beta -> 0: equal weights; beta -> 1: inverse frequency.
    np.testing.assert_allclose(class_weights(targets, 4, "effective_number", beta=0.0).numpy(), [1, 1, 0, 1])
    np.testing.assert_allclose(class_weights(targets, 4, "effective_number", beta=1 - 1e-9).numpy(), inv.numpy(), rtol=1e-4)
    with pytest.raises(EdgedermError, match="scheme"):
        class_weights(targets, 4, "log")
    with pytest.raises(EdgedermError, match="beta"):
        class_weights(targets, 4, "effective_number", beta=1.0)
    with pytest.raises(EdgedermError):
        class_weights([0, 5], 4)


# -- sampling -----------------------------------------------------------------------------------
def test_balanced_sampler_draws_uniform_classes() -> None:
    targets = [0] * 1000 + [1] * 100 + [2] * 10
    draws = list(balanced_sampler(targets, generator=torch.Generator().manual_seed(0), num_samples=30000))
    freq = np.bincount(np.asarray(targets)[draws], minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.02)
    # Every one of the 10 rare images gets drawn, not just a few of them.
    assert set(range(1100, 1110)) <= set(draws)
    # Default epoch length and seeded reproducibility.
    s1 = list(balanced_sampler(targets, generator=torch.Generator().manual_seed(5)))
    s2 = list(balanced_sampler(targets, generator=torch.Generator().manual_seed(5)))
    assert len(s1) == len(targets) and s1 == s2


def test_oversample_indices_exact_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    targets = rng.permutation([0] * 100 + [1] * 30 + [2] * 7 + [4] * 1)  # class 3 absent
    idx = oversample_indices(targets, seed=1)
    counts = Counter(int(targets[i]) for i in idx)
    assert counts == {0: 100, 1: 100, 2: 100, 4: 100}
    assert set(idx) == set(range(len(targets)))  # every original kept
    # As even as possible: a class's images appear floor or ceil(goal / n) times.
    per_image = Counter(idx)
    sevens = [per_image[i] for i in np.flatnonzero(targets == 2)]
    assert set(sevens) <= {14, 15} and sum(sevens) == 100
    assert oversample_indices(targets, seed=1) == idx
    assert oversample_indices(targets, seed=2) != idx

    half = oversample_indices(targets, seed=1, target=0.5)
    assert Counter(int(targets[i]) for i in half) == {0: 100, 1: 50, 2: 50, 4: 50}
    third = oversample_indices(targets, seed=1, target=0.3)
    assert Counter(int(targets[i]) for i in third) == {0: 100, 1: 30, 2: 30, 4: 30}
    for bad in (1.5, 0.0, "min"):
        with pytest.raises(EdgedermError):
            oversample_indices(targets, seed=1, target=bad)


def test_describe_sampling() -> None:
    targets = [0] * 6 + [1] * 2 + [2]
    idx = oversample_indices(targets, seed=0)
    d = describe_sampling(targets, idx, classes=["NV", "MEL", "DF"])
    assert d == {"before": {"NV": 6, "MEL": 2, "DF": 1}, "after": {"NV": 6, "MEL": 6, "DF": 6}, "n_before": 9, "n_after": 18}
    assert describe_sampling(targets, None)["after"] == {"0": 6, "1": 2, "2": 1}
    with pytest.raises(EdgedermError):
        describe_sampling(targets, [0, 9])


# -- augmentation tiers -----------------------------------------------------------------------------
def _ham_counts(data_root: Path) -> dict[str, int]:
    path = real_data_set(data_root, "metadata/HAM10000_metadata.csv")
    with path.open(newline="", encoding="utf-8") as f:
        return dict(Counter(normalize_label(row["dx"], "ham10000_dx") for row in csv.DictReader(f)))


def test_tiers_on_ham10000_counts(data_root: Path) -> None:
    counts = _ham_counts(data_root)
    assert counts["NV"] == 6705 and counts["DF"] == 115 and sum(counts.values()) == 10015
    classes = list(HAM7.classes)
    order = ["light", "medium", "heavy"]

    plain = assign_tiers(counts, classes, TierConfig(boost={}))
    by_count = sorted(classes, key=lambda c: -counts[c])  # common -> rare
    levels = [order.index(plain[c]) for c in by_count]
    assert levels == sorted(levels), "a rarer class never gets a lighter tier"
    assert plain == {
        "NV": "light", "MEL": "medium", "BKL": "medium", "BCC": "heavy", "AKIEC": "heavy", "VASC": "heavy", "DF": "heavy"
    }

    boosted = assign_tiers([counts[c] for c in classes], classes)  # default config, sequence counts
    assert boosted["MEL"] == "heavy" and boosted["BKL"] == "medium"
    assert {c: t for c, t in boosted.items() if c != "MEL"} == {c: t for c, t in plain.items() if c != "MEL"}
    assert imbalance_ratios(counts, classes)["DF"] == pytest.approx(6705 / 115)

    # Thresholds and boost are configurable; boost clamps to the table and may be negative.
    cfg = TierConfig(thresholds=(7, 50), boost={"MEL": 5, "NV": -3, "SCC": 1})
    t = assign_tiers(counts, classes, cfg)
    assert t == {
        "NV": "light", "BKL": "light", "MEL": "heavy", "BCC": "medium", "AKIEC": "medium", "VASC": "medium", "DF": "heavy"
    }


def test_tier_boundaries_and_config_roundtrip() -> None:
    classes = ["a", "b", "c", "d"]
    # ratios 1, 2 (exactly the threshold -> heavier tier), 10, inf (absent class)
    expected = {"a": "light", "b": "medium", "c": "heavy", "d": "heavy"}
    assert assign_tiers([20, 10, 2, 0], classes, TierConfig(boost={})) == expected
    table = {"soft": {"dihedral": True}, "hard": DEFAULT_TIERS["heavy"]}
    cfg = TierConfig.from_dict({"thresholds": [3.0], "boost": {"a": 1}, "tiers": table})
    assert cfg.tier_names == ["soft", "hard"]
    assert assign_tiers([20, 10, 2, 1], classes, cfg) == {"a": "hard", "b": "soft", "c": "hard", "d": "hard"}
    again = TierConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict() and again.tiers["soft"]["rotation"] == 0.0
    assert TierConfig.from_dict(None).to_dict() == TierConfig().to_dict()
    for bad in (
        {"thresholds": [2.0]},  # 3 tiers need 2 thresholds
        {"thresholds": [10.0, 2.0]},
        {"bost": {}},
        {"tiers": {"x": {"rotate": 10}}, "thresholds": []},
        {"tiers": {"x": {"crop_scale": [0.9, 0.5]}}, "thresholds": []},
        {"boost": {"MEL": 1.5}},
    ):
        with pytest.raises(EdgedermError) as e:
            TierConfig.from_dict(bad)
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def lesion_images(data_root: Path) -> list[Image.Image]:
    folder = real_data_set(data_root, "ham10000/HAM10000_images_part_1")
    return [load_image(p) for p in sorted(folder.glob("*.jpg"))[:2]] + rgb_images(1, (97, 61)) + [Image.new("L", (40, 300), 128)]


@pytest.mark.parametrize("tier", list(DEFAULT_TIERS))
def test_each_tier_returns_size_rgb(tier: str, lesion_images: list[Image.Image]) -> None:
    torch.manual_seed(0)
    tf = build_tier_transform(64, DEFAULT_TIERS[tier], name=tier)
    for img in lesion_images:
        for _ in range(15):
            out = tf(img)
            assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (64, 64)


def test_heavier_tiers_change_images_more(lesion_images: list[Image.Image]) -> None:
    img = lesion_images[0]
    ref = np.asarray(build_tier_transform(64, {}, name="none")(img), dtype=np.float32)  # the eval framing
    assert np.array_equal(ref, np.asarray(build_tier_transform(64, {})(img)))

    def stat_change(out: Image.Image) -> float:
        # Intensity statistics: blind to orientation, sensitive to crop, colour jitter, blur.
        a = np.asarray(out, np.float32)
        return abs(a.std() - ref.std()) + abs(a.mean() - ref.mean())

    dist = {}
    for tier in DEFAULT_TIERS:
        torch.manual_seed(1)
        tf = build_tier_transform(64, DEFAULT_TIERS[tier])
        dist[tier] = np.mean([stat_change(tf(img)) for _ in range(40)])
    assert dist["light"] < dist["medium"] < dist["heavy"]


def test_class_augment_maps_class_index_to_tier(lesion_images: list[Image.Image]) -> None:
    classes = list(HAM7.classes)
    tiers = assign_tiers({"MEL": 1113, "NV": 6705, "BCC": 514, "AKIEC": 327, "BKL": 1099, "DF": 115, "VASC": 142}, classes)
    aug = build_class_augment(32, classes, tiers)
    assert sorted(aug) == list(range(7))
    assert aug[classes.index("DF")] is aug[classes.index("VASC")]  # shared per tier
    assert aug[classes.index("NV")] is not aug[classes.index("DF")]
    for i in aug:
        assert aug[i](lesion_images[0]).size == (32, 32)
    with pytest.raises(EdgedermError):
        build_class_augment(32, classes, {"MEL": "heavy"})
    with pytest.raises(EdgedermError):
        build_class_augment(32, classes, {c: "extreme" for c in classes})


def test_same_seed_same_augmentation(lesion_images: list[Image.Image]) -> None:
    classes = ["NV", "MEL", "DF"]
    aug = build_class_augment(48, classes, {"NV": "light", "MEL": "medium", "DF": "heavy"})
    pipelines = [aug[0], aug[1], aug[2], basic_augment(48)]

    def run(seed: int) -> list[bytes]:
        torch.manual_seed(seed)
        return [tf(img).tobytes() for _ in range(6) for tf in pipelines for img in lesion_images[:2]]

    first = run(123)
    assert run(123) == first
    assert run(124) != first
    # Only torch's RNG matters: numpy's and Python's global RNGs do not change the result.
    np.random.seed(99)
    import random

    random.seed(99)
    assert run(123) == first
    # Restoring the RNG state mid-stream (what --resume does) continues identically.
    torch.manual_seed(7)
    pipelines[3](lesion_images[0])
    state = torch.get_rng_state()
    a = [tf(lesion_images[0]).tobytes() for tf in pipelines]
    torch.set_rng_state(state)
    assert [tf(lesion_images[0]).tobytes() for tf in pipelines] == a


def test_basic_augment_output_size(lesion_images: list[Image.Image]) -> None:
    torch.manual_seed(0)
    assert basic_augment(40)(lesion_images[0]).size == (40, 40)


def test_occlusion_and_blur_steps() -> None:
    from edgederm.train.augment import RandomGaussianBlur, RandomOcclusion

    img = rgb_images(1, (50, 40), seed=3)[0]
    arr = np.asarray(img)
    torch.manual_seed(0)
    out = np.asarray(RandomOcclusion(1.0, (0.1, 0.1), (1.0, 1.0))(img))
    changed = np.argwhere((out != arr).any(-1))
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert 0.07 < (y1 - y0 + 1) * (x1 - x0 + 1) / (50 * 40) < 0.13  # one rectangle of ~10% area
    patch = out[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3)
    assert (patch == np.round(arr.reshape(-1, 3).mean(0))).all()  # flat, the image's mean colour
    assert RandomOcclusion(0.0, (0.1, 0.1), (1.0, 1.0))(img) is img
    blurred = np.asarray(RandomGaussianBlur(1.0, (2.0, 2.0))(img), np.float32)
    assert blurred.std() < arr.astype(np.float32).std() * 0.5  # noise is smoothed away
