"""Ensemble combination (edgederm.stacking): BACC weights, logit stacking, cross-fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from edgederm.errors import DataError, EdgedermError
from edgederm.stacking import (
    apply_stacking,
    bacc_weights,
    cross_fitted_predictions,
    fit_stacking,
    stacking_features,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _complementary_members(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Six classes. Member A separates classes 0–2 and knows nothing of 3–5; member B separates
    3–5 and confidently calls every 0–2 image class 0."""
    C = 6
    y = rng.integers(0, C, n)
    a, b = rng.normal(size=(n, C)), rng.normal(size=(n, C))
    low = y < 3
    a[low, y[low]] += 3.0
    b[~low, y[~low]] += 3.0
    b[low, 0] += 4.0
    return y, [a, b]


def _bacc(y: np.ndarray, probs: np.ndarray) -> float:
    return float(balanced_accuracy_score(y, probs.argmax(axis=1)))


def test_stacking_beats_every_member_and_the_weighted_average() -> None:
    rng = np.random.default_rng(0)
    y_val, val = _complementary_members(1200, rng)
    y_test, test = _complementary_members(1200, rng)  # judged on data the stacker never saw
    params = fit_stacking(val, y_val)
    stacked = _bacc(y_test, apply_stacking(test, params))
    singles = [_bacc(y_test, _softmax(z)) for z in test]
    w = bacc_weights([_bacc(y_val, _softmax(z)) for z in val])
    averaged = _bacc(y_test, sum(wi * _softmax(z) for wi, z in zip(w, test)))
    assert stacked >= max(singles) + 0.2
    assert stacked >= averaged + 0.2  # averaging cannot learn that B's "class 0" means "0–2"
    assert stacked > 0.9


def test_stacking_matches_sklearn_and_round_trips_through_json() -> None:
    rng = np.random.default_rng(1)
    y, members = _complementary_members(600, rng)
    params = fit_stacking(members, y, C_reg=0.5)
    assert params["kind"] == "logit_stacking" and params["input"] == "log_probs"
    assert np.shape(params["coef"]) == (6, 12) and np.shape(params["intercept"]) == (6,)
    reference = LogisticRegression(C=0.5, class_weight="balanced", max_iter=1000)
    X = stacking_features(members)
    reference.fit(X, y)
    probs = apply_stacking(members, params)
    np.testing.assert_allclose(probs, reference.predict_proba(X), atol=1e-10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # Plain JSON (as stored in the card): identical probabilities after the round trip.
    again = json.loads(json.dumps(params))
    np.testing.assert_array_equal(apply_stacking(members, again), probs)


def test_binary_stacker_is_a_two_row_softmax() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    m1 = rng.normal(size=(400, 2))
    m1[np.arange(400), y] += 1.5
    m2 = rng.normal(size=(400, 2))
    params = fit_stacking([m1, m2], y)
    assert np.shape(params["coef"]) == (2, 4)
    X = stacking_features([m1, m2])
    ref = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(X, y)
    np.testing.assert_allclose(apply_stacking([m1, m2], params), ref.predict_proba(X), atol=1e-10)


def test_log_prob_features_ignore_the_arbitrary_logit_level() -> None:
    rng = np.random.default_rng(3)
    y, members = _complementary_members(500, rng)
    # Softmax cannot see a per-image constant added to a member's logits; neither may the stacker.
    shifted = [z + rng.normal(scale=5.0, size=(len(z), 1)) for z in members]
    np.testing.assert_allclose(stacking_features(shifted), stacking_features(members), atol=1e-9)
    p = fit_stacking(members, y)
    np.testing.assert_allclose(apply_stacking(shifted, p), apply_stacking(members, p), atol=1e-9)
    # Raw logits do see it.
    raw = fit_stacking(members, y, input="logits")
    assert raw["input"] == "logits"
    assert not np.allclose(apply_stacking(shifted, raw), apply_stacking(members, raw), atol=1e-3)


def test_cross_fitting_is_grouped_by_lesion() -> None:
    """Member outputs that carry no information, but identical for every image of a lesion: a
    stacker can memorise lesions, and only lesion-grouped folds keep that out of the estimate."""
    rng = np.random.default_rng(4)
    lesions, per_lesion, C = 80, 4, 4
    y = np.repeat(rng.integers(0, C, lesions), per_lesion)
    members = [
        np.repeat(rng.normal(size=(lesions, C)), per_lesion, axis=0)
        + rng.normal(scale=0.01, size=(lesions * per_lesion, C))
        for _ in range(4)
    ]
    groups = np.repeat([f"lesion_{i}" for i in range(lesions)], per_lesion)
    in_sample = _bacc(y, apply_stacking(members, fit_stacking(members, y)))
    oof = cross_fitted_predictions(members, y, groups, k=5)
    assert oof.shape == (len(y), C) and np.isfinite(oof).all()
    np.testing.assert_allclose(oof.sum(axis=1), 1.0)
    by_image = cross_fitted_predictions(members, y, np.arange(len(y)), k=5)
    assert in_sample > 0.45  # memorised
    assert _bacc(y, oof) < 0.35  # chance is 0.25
    assert _bacc(y, by_image) > _bacc(y, oof) + 0.1  # image-level folds leak the lesions back
    # Deterministic given the seed.
    np.testing.assert_array_equal(cross_fitted_predictions(members, y, groups, k=5), oof)


def test_cross_fitted_predictions_track_the_full_fit_on_real_signal() -> None:
    rng = np.random.default_rng(5)
    y, members = _complementary_members(600, rng)
    groups = np.arange(600) // 2
    oof = cross_fitted_predictions(members, y, groups, k=4)
    full = apply_stacking(members, fit_stacking(members, y))
    assert _bacc(y, oof) > 0.9 and abs(_bacc(y, oof) - _bacc(y, full)) < 0.05


def test_bacc_weights_are_the_seeds_rule() -> None:
    w = bacc_weights([0.5, 0.7, 0.8])
    assert sum(w) == pytest.approx(1.0)
    assert w == pytest.approx([0.5 / 2.0, 0.7 / 2.0, 0.8 / 2.0])
    assert bacc_weights([0.0, 0.0]) == pytest.approx([0.5, 0.5])
    assert bacc_weights([0.6]) == [1.0]
    for bad in ([], [float("nan")], [1.5], [-0.1]):
        with pytest.raises(EdgedermError):
            bacc_weights(bad)


def test_bad_inputs_are_one_line_errors() -> None:
    rng = np.random.default_rng(6)
    y, members = _complementary_members(300, rng)
    params = fit_stacking(members, y)
    cases = [
        (lambda: fit_stacking([members[0], members[1][:, :5]], y), DataError, "one shape"),
        (lambda: fit_stacking(members, y[:10]), DataError, "one class index per image"),
        (lambda: fit_stacking(members, np.where(y == 5, 0, y)), DataError, r"\[5\] have no images"),
        (lambda: fit_stacking(members[0], y), DataError, "list of"),
        (lambda: fit_stacking(members, y, C_reg=0), EdgedermError, "C_reg"),
        (lambda: fit_stacking(members, y, input="probs"), EdgedermError, "unknown stacking input"),
        (lambda: apply_stacking(members[:1], params), DataError, "fitted on 2 members"),
        (lambda: apply_stacking([m[:, :5] for m in members], params), DataError, "6"),
        (lambda: apply_stacking(members, {**params, "kind": "mean"}), EdgedermError, "not logit"),
        (lambda: cross_fitted_predictions(members, y, np.arange(300) % 3, k=5), DataError, "at least 5 lesions"),
        (lambda: fit_stacking([np.full((300, 6), np.nan)] * 2, y), DataError, "NaN"),
    ]
    for call, err, match in cases:
        with pytest.raises(err, match=match) as e:
            call()
        assert "\n" not in str(e.value)
