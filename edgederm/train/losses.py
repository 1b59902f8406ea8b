"""Classification losses for imbalanced dermoscopy data: focal loss and class weights.

``FocalLoss`` (Lin et al. 2017) is written as a soft-target cross-entropy with a per-class
modulating factor::

    loss_i = sum_c  w_c * q_ic * (1 - p_ic)**gamma * (-log p_ic)

where ``p = softmax(logits)``, ``w`` the class weights (1 when none) and ``q`` the target
distribution: one-hot, or with label smoothing ``eps`` the same mixture torch's
``CrossEntropyLoss`` uses, ``(1 - eps) * onehot + eps / C``. The ``"mean"`` reduction divides by
``sum_i w[y_i]`` like torch's weighted cross-entropy does, so with ``gamma=0`` the loss *is*
``nn.CrossEntropyLoss(weight=w, label_smoothing=eps)`` (tested), and switching a recipe from
``ce`` to ``focal`` changes one thing only.

``class_weights`` gives inverse, square-root-inverse or effective-number (Cui et al. 2019,
"Class-Balanced Loss Based on Effective Number of Samples") weights, normalised to mean 1 over the
classes present so the learning rate keeps its meaning.
"""

from __future__ import annotations

import logging
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgedermError

__all__ = ["FocalLoss", "build_loss", "class_weights", "LOSS_KINDS", "WEIGHT_SCHEMES"]

log = logging.getLogger(__name__)

LOSS_KINDS = ("ce", "focal")
WEIGHT_SCHEMES = ("inverse", "sqrt_inverse", "effective_number")
_REDUCTIONS = ("mean", "sum", "none")

# Below this, (1 - p)**gamma is treated as 0: the clamp keeps the derivative of x**gamma finite
# for gamma < 1 when a softmax probability rounds to exactly 1.
_TINY = 1e-12


class FocalLoss(nn.Module):
    """Multi-class focal loss on logits ``(N, C)`` and integer targets ``(N,)``.

    ``gamma=0`` gives exactly torch's cross-entropy (same ``weight``, ``label_smoothing`` and
    weighted-mean normalisation). ``reduction="none"`` returns the per-sample losses (weighted,
    not normalised).
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> None:
        super().__init__()
        _check_common(gamma, label_smoothing)
        if reduction not in _REDUCTIONS:
            raise EdgedermError(f"focal loss: reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        # A buffer, so ``.to(device)`` moves it with the module.
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2:
            raise ValueError(f"focal loss expects logits of shape (N, C), got {tuple(logits.shape)}")
        n_classes = logits.shape[1]
        # Work in float32 at least: under autocast the logits may be half precision.
        logp = F.log_softmax(logits.float(), dim=1)
        w = self.weight.to(logp.device) if self.weight is not None else None
        if w is not None and w.numel() != n_classes:
            raise ValueError(f"focal loss: {w.numel()} class weights for {n_classes} logits")
        eps = self.label_smoothing
        if eps == 0.0:
            # One-hot target: only the true class contributes.
            logp_t = logp.gather(1, target[:, None]).squeeze(1)
            per = -logp_t * self._modulation(logp_t)
            if w is not None:
                per = per * w[target]
        else:
            q = torch.full_like(logp, eps / n_classes)
            q.scatter_add_(1, target[:, None], torch.full_like(logp[:, :1], 1.0 - eps))
            terms = -logp * q * self._modulation(logp)
            if w is not None:
                terms = terms * w
            per = terms.sum(1)
        if self.reduction == "none":
            return per
        if self.reduction == "sum":
            return per.sum()
        # torch's weighted mean: normalise by the weights of the targets, not by N.
        denom = w[target].sum() if w is not None else torch.tensor(float(per.numel()), device=per.device)
        return per.sum() / denom

    def _modulation(self, logp: torch.Tensor) -> torch.Tensor | float:
        if self.gamma == 0.0:
            return 1.0
        # 1 - p computed as -expm1(log p): accurate when p is close to 1 (the easy examples).
        return (-torch.expm1(logp)).clamp(min=_TINY).pow(self.gamma)


def _check_common(gamma: float, label_smoothing: float) -> None:
    if not (gamma >= 0.0 and np.isfinite(gamma)):
        raise EdgedermError(f"focal loss: gamma must be a finite number >= 0, got {gamma}")
    if not 0.0 <= label_smoothing < 1.0:
        raise EdgedermError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def build_loss(
    kind: str,
    *,
    gamma: float = 2.0,
    class_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> nn.Module:
    """The training loss named by a recipe: ``"ce"`` (torch's cross-entropy) or ``"focal"``."""
    if kind == "ce":
        _check_common(0.0, label_smoothing)
        return nn.CrossEntropyLoss(weight=class_weight, label_smoothing=label_smoothing)
    if kind == "focal":
        return FocalLoss(gamma=gamma, weight=class_weight, label_smoothing=label_smoothing)
    raise EdgedermError(f"unknown loss {kind!r}; choose one of {list(LOSS_KINDS)}")


def class_weights(
    targets: Sequence[int] | np.ndarray | torch.Tensor,
    n_classes: int,
    scheme: Literal["inverse", "sqrt_inverse", "effective_number"] = "inverse",
    beta: float = 0.999,
) -> torch.Tensor:
    """Per-class loss weights from the training targets (float32 tensor of length ``n_classes``).

    - ``inverse``: ``1 / n_c``
    - ``sqrt_inverse``: ``1 / sqrt(n_c)`` (milder)
    - ``effective_number``: ``(1 - beta) / (1 - beta**n_c)`` (Cui et al. 2019); ``beta -> 0`` gives
      equal weights, ``beta -> 1`` approaches ``inverse``.

    Normalised to mean 1 over the classes present; absent classes get weight 0.
    """
    counts = _counts(targets, n_classes)
    if scheme not in WEIGHT_SCHEMES:
        raise EdgedermError(f"unknown class-weight scheme {scheme!r}; choose one of {list(WEIGHT_SCHEMES)}")
    present = counts > 0
    if not present.any():
        raise EdgedermError("class weights: no training targets")
    n = np.where(present, counts, 1.0)
    if scheme == "inverse":
        raw = 1.0 / n
    elif scheme == "sqrt_inverse":
        raw = 1.0 / np.sqrt(n)
    else:
        if not 0.0 <= beta < 1.0:
            raise EdgedermError(f"effective-number class weights need 0 <= beta < 1, got {beta}")
        # 1 - beta**n as -expm1(n log beta): no cancellation when beta**n is close to 1.
        raw = (1.0 - beta) / -np.expm1(n * np.log(beta)) if beta > 0 else np.ones_like(n)
    w = np.where(present, raw, 0.0)
    w = w / w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


def _counts(targets: Sequence[int] | np.ndarray | torch.Tensor, n_classes: int) -> np.ndarray:
    t = targets.cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    t = t.astype(np.int64).ravel()
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise EdgedermError(f"class targets must lie in [0, {n_classes}), found {int(t.min())}..{int(t.max())}")
    return np.bincount(t, minlength=n_classes).astype(np.float64)
