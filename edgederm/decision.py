"""The clinical decision rule: probabilities → one class, as recorded in the card.

``argmax``: the most probable class. ``priority_thresholds``: walk the classes in ``priority``
order (e.g. MEL before AKIEC) and predict the first whose probability reaches its threshold;
otherwise fall back to argmax. This *multi-class* rule is what thresholds are checked with on
held-out data — a threshold tuned one-vs-rest can behave differently once another class's
threshold fires first. The Kotlin and JS demos implement the same rule.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def decide(probs: np.ndarray, classes: Sequence[str], decision: dict[str, Any]) -> np.ndarray:
    """Class indices (N,) for probabilities (N, C) under the card's decision rule."""
    probs = np.asarray(probs)
    pred = probs.argmax(axis=1)
    rule = decision.get("rule", "argmax")
    if rule == "argmax":
        return pred
    if rule != "priority_thresholds":
        raise ValueError(f"unknown decision rule {rule!r}")
    thresholds: dict[str, float] = decision.get("thresholds", {})
    priority: list[str] = list(decision.get("priority", thresholds.keys()))
    decided = np.zeros(len(probs), dtype=bool)
    for name in priority:
        if name not in thresholds:
            continue
        if name not in classes:
            raise ValueError(f"threshold for {name!r}, which is not a class: {list(classes)}")
        c = list(classes).index(name)
        fire = ~decided & (probs[:, c] >= thresholds[name])
        pred = np.where(fire, c, pred)
        decided |= fire
    return pred
