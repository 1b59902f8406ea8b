"""Class-balanced sampling for imbalanced training sets.

Two ways to show a model its rare classes more often:

* ``balanced_sampler``: a ``WeightedRandomSampler`` under which every class present is equally
  likely on each draw (with replacement), so an epoch of ``len(targets)`` draws is class-uniform
  in expectation.
* ``oversample_indices``: random oversampling (the founding projects' approach): a fixed index
  list in which each minority class is replicated up to the largest class (or ``ratio`` × it).
  Every original image stays in at least once and the list only depends on ``seed``; wrap the
  data set in ``torch.utils.data.Subset(ds, indices)`` and let the loader shuffle.

``describe_sampling`` records the per-class counts before and after, for the run log and card.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from ..errors import EdgedermError

__all__ = ["balanced_sampler", "oversample_indices", "describe_sampling"]

log = logging.getLogger(__name__)


def _as_targets(targets: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    t = targets.cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    t = t.astype(np.int64).ravel()
    if t.size == 0:
        raise EdgedermError("cannot sample from an empty training set")
    if t.min() < 0:
        raise EdgedermError(f"class targets must be >= 0, found {int(t.min())}")
    return t


def balanced_sampler(
    targets: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    generator: torch.Generator,
    num_samples: int | None = None,
) -> WeightedRandomSampler:
    """A sampler drawing ``num_samples`` indices (default: ``len(targets)``) with replacement,
    each class present equally likely on every draw."""
    t = _as_targets(targets)
    counts = np.bincount(t)
    weights = 1.0 / counts[t]  # each class's weights sum to 1
    n = len(t) if num_samples is None else int(num_samples)
    if n <= 0:
        raise EdgedermError(f"balanced sampler: num_samples must be positive, got {num_samples}")
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), num_samples=n, replacement=True, generator=generator
    )


def oversample_indices(
    targets: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    seed: int,
    target: str | float = "max",
) -> list[int]:
    """Random oversampling: indices into ``targets`` with minority classes replicated.

    Each class with fewer than ``goal`` images is brought to exactly ``goal``, where ``goal`` is the
    largest class count (``target="max"``) or ``ceil(ratio * max)`` for a float ``ratio`` in
    (0, 1]. Classes at or above the goal are left as they are (never undersampled). A class is
    replicated as evenly as possible: whole copies first, then a seeded draw without replacement
    for the remainder, so no image is repeated more than once more than any other of its class.
    The result is sorted (the loader shuffles it).
    """
    t = _as_targets(targets)
    counts = np.bincount(t)
    biggest = int(counts.max())
    if isinstance(target, str):
        if target != "max":
            raise EdgedermError(f"oversampling target must be 'max' or a ratio in (0, 1], got {target!r}")
        goal = biggest
    else:
        ratio = float(target)
        if not 0.0 < ratio <= 1.0:
            raise EdgedermError(f"oversampling ratio must be in (0, 1], got {target}")
        # The small epsilon keeps e.g. 0.3 * 100 = 30.000000000000004 from becoming 31.
        goal = int(math.ceil(ratio * biggest - 1e-9))
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = [np.arange(len(t))]
    for c, n_c in enumerate(counts):
        if n_c == 0 or n_c >= goal:
            continue
        members = np.flatnonzero(t == c)
        copies, rest = divmod(goal - int(n_c), int(n_c))
        out.extend([members] * copies)
        if rest:
            out.append(rng.choice(members, size=rest, replace=False))
    idx = np.sort(np.concatenate(out))
    log.debug("oversampling: %d -> %d indices (goal %d per class)", len(t), len(idx), goal)
    return idx.tolist()


def describe_sampling(
    targets: Sequence[int] | np.ndarray | torch.Tensor,
    indices: Sequence[int] | np.ndarray | torch.Tensor | None,
    *,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-class counts before and after resampling (JSON-ready).

    ``indices`` is what the loader will draw from (``oversample_indices``'s list, or
    ``list(balanced_sampler(...))`` for one epoch's draws); ``None`` means no resampling. Keys are
    the class names when ``classes`` is given, else the class indices as strings.
    """
    t = _as_targets(targets)
    n_classes = max(int(t.max()) + 1, len(classes) if classes is not None else 0)
    names = list(classes) if classes is not None else [str(i) for i in range(n_classes)]
    if len(names) < n_classes:
        raise EdgedermError(f"describe_sampling: {len(names)} class names for targets up to {n_classes - 1}")
    before = np.bincount(t, minlength=n_classes)
    if indices is None:
        drawn = t
    else:
        ix = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices, dtype=np.int64)
        if ix.size and (ix.min() < 0 or ix.max() >= len(t)):
            raise EdgedermError(f"describe_sampling: indices must lie in [0, {len(t)})")
        drawn = t[ix.astype(np.int64)]
    after = np.bincount(drawn, minlength=n_classes)
    return {
        "before": {names[c]: int(before[c]) for c in range(n_classes)},
        "after": {names[c]: int(after[c]) for c in range(n_classes)},
        "n_before": int(before.sum()),
        "n_after": int(after.sum()),
    }
