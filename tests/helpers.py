"""Small builders shared by tests (tiny real models, cards, images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from edgederm.card import ArtifactCard
from edgederm.checkpoint import member_from_model, save_checkpoint
from edgederm.models import create_model
from edgederm.preprocess import PreprocessSpec

HAM7 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm statistics so a fresh model is not near-constant (see toolchain notes)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def tiny_card(name: str = "tiny", classes: list[str] | None = None, size: int = 32, members: int = 1) -> ArtifactCard:
    return ArtifactCard(
        name=name,
        classes=list(classes or HAM7),
        taxonomy="ham7",
        preprocessing=PreprocessSpec(input_size=(size, size)),
        model={"kind": "single" if members == 1 else "ensemble", "combine": "weighted_mean", "output": "logits",
               "members": [{"name": "small_cnn", "weight": 1.0 / members} for _ in range(members)]},
    )


def tiny_checkpoint(path: Path, *, classes: list[str] | None = None, size: int = 32, seed: int = 0, members: int = 1) -> Path:
    classes = classes or HAM7
    ms = []
    for i in range(members):
        torch.manual_seed(seed + i)
        model = randomize_bn(create_model("small_cnn", len(classes), width=4), seed + i)
        ms.append(member_from_model("small_cnn", model, len(classes), width=4))
    return save_checkpoint(path, ms, tiny_card(classes=classes, size=size, members=members))


def rgb_images(n: int, size: tuple[int, int] = (60, 45), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def natural_images(n: int, seed: int = 0, size: tuple[int, int] = (48, 40)) -> list[Image.Image]:
    """Smooth colour fields with a darker blob: closer to photographs than uniform noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.integers(60, 230, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        cx, cy = rng.integers(10, size[0] - 10), rng.integers(10, size[1] - 10)
        r = int(rng.integers(5, 14))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(20, 120, 3)))
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, (size[1], size[0], 3))
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    return out


def run_cli(capsys: Any, *args: object) -> tuple[int, str, str]:
    """``edgederm ARGS`` through the console entry point: (exit code, stdout, stderr)."""
    from edgederm.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
