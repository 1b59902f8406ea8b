"""Architectures of the founding papers, registered so recipes can train and compare them.

* ``resnet50_ham`` — ResNet-50 with the modified classification head of the HAM10000 ensemble
  paper (GAP → FC 512 → ReLU → Dropout 0.5 → FC).
* ``asff_resnet50`` — ResNet-50 whose conv4 and conv5 feature maps are fused by adaptively
  spatial feature fusion (ASFF), with the three ablation baselines of the ASFF skin-lesion paper
  (``fusion="none" | "sum" | "concat" | "asff"``).
* ``seg_paper_cnn`` — the small from-scratch CNN of the segmentation paper (three double-conv
  blocks, five fully connected layers).

Ablations are the *same* registered name with a different keyword (``fusion="sum"``): the trainer
saves build kwargs in every checkpoint and the runtime rebuilds the model through
``create_model(name, num_classes, **kwargs)``, so an ablation run needs no registry entry of its own.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgedermError
from .registry import register_model

log = logging.getLogger(__name__)

__all__ = ["ASFFResNet50", "LevelFusion", "SegPaperCNN", "ham_head", "FUSIONS"]

FUSIONS = ("none", "sum", "concat", "asff")
Fusion = Literal["none", "sum", "concat", "asff"]


# --------------------------------------------------------------------------------------------
# HAM10000 ensemble paper: ResNet-50 with a modified head
# --------------------------------------------------------------------------------------------


def ham_head(in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.5) -> nn.Sequential:
    """FC(in→hidden) → ReLU → Dropout → FC(hidden→classes); applied after global average pooling."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


@register_model(
    "resnet50_ham",
    input_size=224,
    target_layer="layer4",
    description="ResNet-50 + GAP-FC512-ReLU-Dropout0.5-FC head (HAM10000 ensemble paper)",
)
def resnet50_ham(num_classes: int, pretrained: bool = False, hidden: int = 512, dropout: float = 0.5, **kw: Any) -> nn.Module:
    """ResNet-50 with the modified head of the HAM10000 ensemble paper.

    Reproduces the ensemble member of the HAM10000 seed paper: an ImageNet ResNet-50 whose
    classifier is replaced by global average pooling → FC(2048→``hidden``=512) → ReLU →
    Dropout(0.5) → FC(``hidden``→classes). The model stays a timm ``ResNet`` (only ``fc``
    changes), so a plain ``resnet50`` state dict loads into its backbone with ``weights=`` and
    Grad-CAM targets ``layer4`` as for ``resnet50``. ``pretrained`` passes through to timm.
    """
    import timm

    # num_classes=0 keeps timm's global average pooling and makes ``fc`` an identity; with
    # pretrained=True timm then loads the ImageNet backbone and drops its 1000-class classifier.
    model = timm.create_model("resnet50", pretrained=pretrained, num_classes=0, **kw)
    model.fc = ham_head(model.num_features, num_classes, hidden=hidden, dropout=dropout)
    model.num_classes = num_classes
    return model


# --------------------------------------------------------------------------------------------
# ASFF-ResNet50: adaptive spatial fusion of conv4 and conv5
# --------------------------------------------------------------------------------------------


def _conv_bn_relu(cin: int, cout: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LevelFusion(nn.Module):
    """Fuses a conv4 map (stride 16) with a conv5 map (stride 32) into one stride-16 map.

    ``mode``:

    - ``"none"``: the baseline; returns conv5 unchanged (the plain ResNet-50 GAP head).
    - ``"sum"``: both levels projected to ``width`` (1×1 conv + BN + ReLU), conv5 upsampled ×2,
      added.
    - ``"concat"``: the projected levels concatenated along channels, then a 1×1 conv + BN + ReLU
      back to ``width`` so the classifier has the same input size as ``sum`` and ``asff``.
    - ``"asff"``: one 1×1 conv per level predicts a weight logit at every pixel; a softmax over the
      levels makes the weights of each pixel sum to 1; the output is the per-pixel weighted sum.

    Upsampling is nearest-neighbour by default: stride 32 → 16 is an exact ×2, nearest is what
    the reference ASFF implementation uses, and it exports bit-identically to ONNX, TFLite and
    OpenVINO (bilinear ``Resize`` differs between frameworks in its half-pixel/align-corners
    convention, a known source of export-gate mismatches) and quantises losslessly. ``"bilinear"``
    (half-pixel, as ``tf.image.resize`` in the Keras seed code) is available as an option.
    """

    def __init__(
        self,
        mode: Fusion,
        in4: int = 1024,
        in5: int = 2048,
        width: int = 512,
        upsample: Literal["nearest", "bilinear"] = "nearest",
    ) -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise EdgedermError(f"unknown fusion {mode!r}; choose one of {', '.join(FUSIONS)}")
        if upsample not in ("nearest", "bilinear"):
            raise EdgedermError(f"unknown upsample {upsample!r}; choose 'nearest' or 'bilinear'")
        self.mode = mode
        self.upsample = upsample
        #: (N, 2, H, W) softmax weights of the last forward (``asff`` only); index 0 = conv4.
        self.last_weights: torch.Tensor | None = None
        if mode == "none":
            self.out_channels = in5
            return
        self.out_channels = width
        self.proj4 = _conv_bn_relu(in4, width)
        self.proj5 = _conv_bn_relu(in5, width)
        if mode == "concat":
            self.mix = _conv_bn_relu(2 * width, width)
        elif mode == "asff":
            self.weight4 = nn.Conv2d(width, 1, 1)
            self.weight5 = nn.Conv2d(width, 1, 1)

    def _up(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # size= rather than scale_factor=2: robust to odd conv4 sizes, and static at export.
        if self.upsample == "nearest":
            return F.interpolate(x, size=like.shape[-2:], mode="nearest")
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def level_weights(self, p4: torch.Tensor, p5_up: torch.Tensor) -> torch.Tensor:
        """Per-pixel softmax weights (N, 2, H, W) of the projected levels (``asff`` only)."""
        logits = torch.cat([self.weight4(p4), self.weight5(p5_up)], dim=1)
        return torch.softmax(logits, dim=1)

    def forward(self, c4: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return c5
        p4 = self.proj4(c4)
        p5 = self._up(self.proj5(c5), p4)
        if self.mode == "sum":
            return p4 + p5
        if self.mode == "concat":
            return self.mix(torch.cat([p4, p5], dim=1))
        w = self.level_weights(p4, p5)
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            # Kept for inspection only; exporters trace a pure function, so skip it there.
            self.last_weights = w.detach()
        return w[:, 0:1] * p4 + w[:, 1:2] * p5


class ASFFResNet50(nn.Module):
    """ResNet-50 backbone → conv4/conv5 fusion → GAP → dropout → linear classifier."""

    def __init__(
        self,
        num_classes: int,
        *,
        pretrained: bool = False,
        fusion: Fusion = "asff",
        width: int = 512,
        dropout: float = 0.5,
        upsample: Literal["nearest", "bilinear"] = "nearest",
    ) -> None:
        super().__init__()
        import timm

        # features_only keeps timm's module names (conv1 ... layer4), so pretrained ImageNet
        # weights load as usual; out_indices 3, 4 = layer3 (conv4_x) and layer4 (conv5_x).
        self.backbone = timm.create_model("resnet50", pretrained=pretrained, features_only=True, out_indices=(3, 4))
        in4, in5 = self.backbone.feature_info.channels()
        self.fusion = LevelFusion(fusion, in4=in4, in5=in5, width=width, upsample=upsample)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.fusion.out_channels, num_classes)
        self.num_classes = num_classes

    @property
    def last_fusion_weights(self) -> torch.Tensor | None:
        """Softmax level weights (N, 2, H, W) of the last forward; ``None`` unless ``fusion="asff"``."""
        return self.fusion.last_weights

    def fused_features(self, x: torch.Tensor) -> torch.Tensor:
        c4, c5 = self.backbone(x)
        return self.fusion(c4, c5)

    @torch.no_grad()
    def fusion_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel level weights (N, 2, H/16, W/16) for a batch (call in eval mode); 0 = conv4, 1 = conv5."""
        if self.fusion.mode != "asff":
            raise ValueError(f"fusion={self.fusion.mode!r} has no learned weights; only 'asff' does")
        c4, c5 = self.backbone(x)
        p4 = self.fusion.proj4(c4)
        return self.fusion.level_weights(p4, self.fusion._up(self.fusion.proj5(c5), p4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.fused_features(x)).flatten(1)
        return self.fc(self.dropout(f))


@register_model(
    "asff_resnet50",
    input_size=224,
    target_layer="fusion",
    description="ResNet-50 with adaptive spatial fusion of conv4+conv5 (ASFF paper; fusion=none|sum|concat|asff)",
)
def asff_resnet50(
    num_classes: int,
    pretrained: bool = False,
    fusion: Fusion = "asff",
    width: int = 512,
    dropout: float = 0.5,
    upsample: Literal["nearest", "bilinear"] = "nearest",
) -> nn.Module:
    """ResNet-50 with adaptive spatial feature fusion of conv4 and conv5 (the ASFF skin-lesion paper).

    Reproduces the ASFF-ResNet50 classifier of the seed project Grapesea/ASFF-ResNet50-enhanced
    (benign vs malignant; in edgederm the ``binary`` taxonomy, ``num_classes=2``) with the
    fusion of Liu, Huang & Wang, "Learning Spatial Fusion for Single-Shot Object Detection"
    (arXiv:1911.09516): conv4 (``layer3``, 1024 ch, 14×14 at 224 px) and conv5 (``layer4``,
    2048 ch, 7×7) are projected to ``width`` channels, conv5 is upsampled to conv4's grid, and
    a softmax over the two levels gives per-pixel weights that sum to 1. Note the seed's Keras
    code weights the levels per *channel* from a pooled descriptor (one weight for the whole
    image); this is the spatial ASFF the paper describes. ``fusion`` selects the ablations
    (``none``: plain conv5 GAP head; ``sum``; ``concat``). Any input size divisible by 32 works.
    Grad-CAM targets the fused map (``fusion``).
    """
    return ASFFResNet50(num_classes, pretrained=pretrained, fusion=fusion, width=width, dropout=dropout, upsample=upsample)


# --------------------------------------------------------------------------------------------
# Segmentation paper: small from-scratch CNN classifier
# --------------------------------------------------------------------------------------------


class SegPaperCNN(nn.Module):
    """Three double-conv blocks (conv-BN-ReLU ×2 + 2×2 max-pool), flatten, five FC layers.

    The first FC layer's input is derived from ``input_size`` (``widths[-1] × (input_size/8)²``)
    rather than made size-agnostic by an adaptive pool: the paper's classifier flattens the
    last feature map, so its FC layers see *where* in the image a feature is, and a plain
    Reshape + MatMul exports to every edge runtime (adaptive pooling with a non-integer ratio
    has no exact TFLite/NNAPI equivalent). The price is a fixed input size, checked in
    ``forward`` with a clear message.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_size: int = 128,
        widths: tuple[int, int, int] = (32, 64, 128),
        fc: tuple[int, ...] = (512, 256, 128, 64),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if input_size < 8 or input_size % 8:
            raise EdgedermError(f"seg_paper_cnn: input_size must be a positive multiple of 8 (three 2x2 pools), got {input_size}")
        if len(widths) != 3:
            raise EdgedermError(f"seg_paper_cnn has three conv blocks: widths needs 3 values, got {list(widths)}")
        self.input_size = int(input_size)
        blocks: list[nn.Module] = []
        cin = 3
        for cout in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            cin = cout
        self.features = nn.Sequential(*blocks)
        grid = self.input_size // 8
        layers: list[nn.Module] = [nn.Flatten()]
        fin = widths[-1] * grid * grid
        for h in fc:
            layers += [nn.Linear(fin, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            fin = h
        layers.append(nn.Linear(fin, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise EdgedermError(
                f"seg_paper_cnn was built for {self.input_size}x{self.input_size} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}; build it with input_size={x.shape[-1]} or resize the images"
            )
        return self.classifier(self.features(x))


@register_model(
    "seg_paper_cnn",
    input_size=128,
    target_layer="features.2",
    pretrained_source="none",
    description="Small from-scratch CNN: 3 double-conv blocks + 5 FC layers (segmentation paper)",
)
def seg_paper_cnn(
    num_classes: int,
    pretrained: bool = False,
    input_size: int = 128,
    widths: tuple[int, int, int] | list[int] = (32, 64, 128),
    fc: tuple[int, ...] | list[int] = (512, 256, 128, 64),
    dropout: float = 0.3,
) -> nn.Module:
    """The small CNN trained from scratch in the segmentation paper (classification branch).

    Reproduces the segmentation paper's classifier: three double-convolution blocks
    (conv3×3-BN-ReLU ×2, then 2×2 max-pool; 32/64/128 filters) followed by five fully connected
    layers (flatten → 512 → 256 → 128 → 64 → classes, ReLU + dropout between them), at a fixed
    ``input_size`` (default 128 px; pass the size you train at — it is saved with the checkpoint's
    build kwargs). There are no pretrained weights: the paper trains it from scratch.
    """
    if pretrained:
        raise EdgedermError("seg_paper_cnn has no pretrained weights (the paper trains it from scratch); use --no-pretrained")
    return SegPaperCNN(num_classes, input_size=input_size, widths=tuple(widths), fc=tuple(fc), dropout=dropout)  # type: ignore[arg-type]
