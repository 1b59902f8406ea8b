"""The multi-class decision rule and the TTA views."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgederm.decision import decide
from edgederm.preprocess import PreprocessSpec
from edgederm.tta import TEN_VIEWS, VIEWS, apply_view, check_views

CLASSES = ["MEL", "NV", "BCC", "AKIEC"]


def test_argmax_rule() -> None:
    p = np.array([[0.1, 0.6, 0.2, 0.1], [0.5, 0.2, 0.2, 0.1]])
    assert decide(p, CLASSES, {"rule": "argmax"}).tolist() == [1, 0]


def test_priority_thresholds() -> None:
    p = np.array(
        [
            [0.30, 0.60, 0.05, 0.05],  # MEL fires at 0.25 although NV is the argmax
            [0.20, 0.40, 0.05, 0.35],  # MEL does not fire; AKIEC does
            [0.30, 0.10, 0.10, 0.50],  # both fire: MEL has priority
            [0.10, 0.70, 0.10, 0.10],  # nothing fires: argmax
        ]
    )
    rule = {"rule": "priority_thresholds", "thresholds": {"MEL": 0.25, "AKIEC": 0.3}, "priority": ["MEL", "AKIEC"]}
    assert decide(p, CLASSES, rule).tolist() == [0, 3, 0, 1]
    rule["priority"] = ["AKIEC", "MEL"]
    assert decide(p, CLASSES, rule).tolist() == [0, 3, 3, 1]


def test_threshold_for_unknown_class() -> None:
    with pytest.raises(ValueError, match="not a class"):
        decide(np.ones((1, 4)) / 4, CLASSES, {"rule": "priority_thresholds", "thresholds": {"SCC": 0.1}})


def test_ten_views_are_distinct_and_exact() -> None:
    spec = PreprocessSpec(input_size=(32, 32))
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    outs = {v: np.asarray(apply_view(v, img, spec)) for v in TEN_VIEWS}
    assert len(TEN_VIEWS) == 10
    flat = [o.tobytes() for o in outs.values()]
    assert len(set(flat)) == 10
    a = np.asarray(img)
    np.testing.assert_array_equal(outs["hflip"], a[:, ::-1])
    np.testing.assert_array_equal(outs["rot180"], a[::-1, ::-1])
    np.testing.assert_array_equal(outs["transpose"], a.transpose(1, 0, 2))
    for v in VIEWS:
        assert outs.get(v, np.asarray(apply_view(v, img, spec))).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="unknown TTA"):
        check_views(["identity", "rot45"])
