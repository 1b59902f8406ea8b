"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas").

A U-Net whose skip connections pass through *additive attention gates*: before an encoder feature
map ``x`` is concatenated into the decoder, it is multiplied by coefficients
``alpha = sigmoid(psi(relu(W_x x + W_g g)))`` computed from ``x`` and the coarser decoder feature
``g`` (the gating signal). The gate learns to suppress skin texture, hairs and the dermoscope's
vignette in the skip features and keep the lesion's, so the decoder is not re-fed the
high-resolution clutter of the whole image.

As in the paper, ``W_x`` is a strided 2x2 convolution that brings ``x`` down to the resolution of
``g`` (the gate is computed at the coarse scale, which is cheaper and sees more context) and the
coefficients are upsampled back bilinearly. The model outputs one channel of *logits* per pixel at
the input resolution; ``sigmoid(logit) >= 0.5`` (i.e. ``logit >= 0``) is the lesion mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionGate", "AttentionUNet", "ConvBlock"]


class ConvBlock(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) x 2: the U-Net's double convolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class AttentionGate(nn.Module):
    """Additive attention gate: ``x * alpha(x, g)`` with one coefficient per pixel of ``x``.

    ``x``: skip features (N, x_ch, H, W); ``g``: gating features from the coarser level
    (N, g_ch, H/2, W/2). Returns the gated ``x`` (same shape) and, when asked, ``alpha``
    (N, 1, H, W) in (0, 1).
    """

    def __init__(self, x_ch: int, g_ch: int, inter_ch: int) -> None:
        super().__init__()
        # Strided: x is brought to g's resolution, where the gate is computed (Oktay et al.).
        self.theta_x = nn.Conv2d(x_ch, inter_ch, kernel_size=2, stride=2, bias=False)
        self.phi_g = nn.Conv2d(g_ch, inter_ch, kernel_size=1, bias=True)
        self.psi = nn.Conv2d(inter_ch, 1, kernel_size=1, bias=True)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        theta = self.theta_x(x)
        phi = self.phi_g(g)
        if phi.shape[-2:] != theta.shape[-2:]:
            phi = F.interpolate(phi, size=theta.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        return F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.coefficients(x, g)
        return x * alpha, alpha


class _Up(nn.Module):
    """One decoder level: gate the skip with the coarse features, upsample, concatenate, convolve."""

    def __init__(self, coarse_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.gate = AttentionGate(skip_ch, coarse_ch, max(skip_ch // 2, 1))
        self.up = nn.ConvTranspose2d(coarse_ch, skip_ch, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * skip_ch, out_ch)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gated, alpha = self.gate(skip, coarse)
        return self.conv(torch.cat([gated, self.up(coarse)], dim=1)), alpha


class AttentionUNet(nn.Module):
    """Attention U-Net: ``depth`` poolings, widths ``base * 2**level``, logits at input size.

    Inputs must have height and width divisible by ``2**depth``. ``forward(x)`` returns logits
    (N, out_ch, H, W); ``forward(x, return_attention=True)`` also returns the attention maps of
    the gates, finest first (each (N, 1, H / 2**level, W / 2**level)).
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        if depth < 1 or base < 1 or in_ch < 1 or out_ch < 1:
            raise ValueError(f"AttentionUNet needs positive sizes, got in_ch={in_ch}, out_ch={out_ch}, base={base}, depth={depth}")
        self.in_ch, self.out_ch, self.base, self.depth = in_ch, out_ch, base, depth
        widths = [base * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList([ConvBlock(in_ch, widths[0])])
        self.encoders.extend(ConvBlock(widths[i - 1], widths[i]) for i in range(1, depth + 1))
        self.pool = nn.MaxPool2d(2)
        # decoders[i] goes from level i+1 to level i; applied deepest first.
        self.decoders = nn.ModuleList(_Up(widths[i + 1], widths[i], widths[i]) for i in range(depth))
        self.head = nn.Conv2d(widths[0], out_ch, kernel_size=1)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2**self.depth

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"AttentionUNet(depth={self.depth}) needs height and width divisible by {self.multiple}, got {h}x{w}")
        skips: list[torch.Tensor] = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        alphas: list[torch.Tensor] = []
        for level in reversed(range(self.depth)):
            x, alpha = self.decoders[level](x, skips[level])
            alphas.append(alpha)
        logits = self.head(x)
        if return_attention:
            return logits, alphas[::-1]
        return logits
