"""Combining ensemble members: BACC-weighted averaging, or logit stacking fitted on validation.

Averaging (``bacc_weights``, the seed projects' rule: each member weighted by its validation
BACC) cannot exploit that one member is good at some classes and another at others; a stacker
can. ``fit_stacking`` learns a multinomial logistic regression from the members' concatenated
per-class outputs to the class, ``apply_stacking`` applies it with numpy only (the runtime has no
scikit-learn requirement), and the parameters are plain JSON for the card.

**Inputs are log-probabilities** (``input="log_probs"``, the default): each member's logits go
through ``log_softmax`` first. Softmax is invariant to adding a constant to a row of logits, so
cross-entropy training leaves each image's logit *level* undetermined — it drifts between
checkpoints and members and carries no class information. A linear model on raw logits would
read that drift as signal; on log-probabilities it is gone, each feature means the same thing
("log P(class) according to member m") for every member, and the features are also what a
probability-emitting export gives (``log p``). ``input="logits"`` is kept for comparison.

**Leakage.** The validation set has already been used to pick each member's best epoch (early
stopping). Fitting the stacker on it *and* calibrating clinical thresholds on the stacker's
in-sample predictions stacks a second optimism on the first: the stacker fits the validation
labels a little too well, the thresholds look met, and they are missed on new data.
``cross_fitted_predictions`` gives each validation image a prediction from a stacker fitted on
the *other* lesions (folds grouped by lesion, so images of one lesion never sit on both sides);
calibrate thresholds on those, and deploy the stacker fitted on all of validation. What remains
optimistic is the members' own early stopping, which only a separate calibration split removes.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from .numerics import log_softmax

from edgederm.errors import DataError, EdgedermError

log = logging.getLogger(__name__)

__all__ = [
    "INPUTS",
    "apply_stacking",
    "bacc_weights",
    "cross_fitted_predictions",
    "fit_stacking",
    "stacking_features",
]

INPUTS = ("log_probs", "logits")
PARAMS_KIND = "logit_stacking"
# A member with a validation BACC of 0 (or a NaN guard) keeps a tiny weight, so the weights stay
# defined; the same floor as the trainer's rule.
_MIN_BACC = 1e-6


def bacc_weights(val_baccs: Sequence[float]) -> list[float]:
    """The seeds' averaging rule: weight_i = BACC_i / Σ BACC (each BACC floored at 1e-6)."""
    vals = [float(b) for b in val_baccs]
    if not vals:
        raise EdgedermError("bacc_weights needs at least one member's validation BACC")
    bad = [b for b in vals if not math.isfinite(b) or b < 0.0 or b > 1.0]
    if bad:
        raise EdgedermError(f"validation BACCs must be in [0, 1], got {bad}")
    floored = [max(b, _MIN_BACC) for b in vals]
    total = sum(floored)
    return [b / total for b in floored]


def _check_members(member_logits: Sequence[Any], n_classes: int | None = None) -> list[np.ndarray]:
    if isinstance(member_logits, np.ndarray) and member_logits.ndim == 2:
        raise DataError("member_logits must be a list of (N, C) arrays, one per member")
    arrays = [np.asarray(m, dtype=np.float64) for m in member_logits]
    if not arrays:
        raise DataError("member_logits is empty: need at least one member's outputs")
    shapes = {a.shape for a in arrays}
    if any(a.ndim != 2 for a in arrays) or len(shapes) != 1:
        raise DataError(
            f"member outputs must all be (N, C) arrays of one shape, got {[a.shape for a in arrays]}"
        )
    N, C = arrays[0].shape
    if N == 0 or C < 2:
        raise DataError(f"member outputs must have at least one image and 2 classes, got {(N, C)}")
    if n_classes is not None and C != n_classes:
        raise DataError(f"member outputs have {C} classes but the stacker was fitted on {n_classes}")
    if not all(np.isfinite(a).all() for a in arrays):
        raise DataError("member outputs contain NaN or infinite values")
    return arrays


def stacking_features(member_logits: Sequence[Any], input: str = "log_probs") -> np.ndarray:
    """(N, M·C) features, member-major: column ``m·C + c`` is member m's output for class c."""
    if input not in INPUTS:
        raise EdgedermError(f"unknown stacking input {input!r}; choose one of {list(INPUTS)}")
    arrays = _check_members(member_logits)
    if input == "log_probs":
        arrays = [log_softmax(a) for a in arrays]
    return np.concatenate(arrays, axis=1)


def _fit(
    X: np.ndarray, y: np.ndarray, n_classes: int, C_reg: float, class_weight: Any, max_iter: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    counts = np.bincount(y, minlength=n_classes)
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        raise DataError(
            f"{what}: class index(es) {missing.tolist()} have no images; the stacker could never "
            "predict them (use more validation data, or averaging)"
        )
    # lbfgs fits the multinomial (softmax) model for more than two classes.
    model = LogisticRegression(C=C_reg, class_weight=class_weight, max_iter=max_iter)
    # The problem is tiny (N × M·C); a multi-threaded BLAS only adds thread start-up and, on a
    # busy machine, oversubscription (measured 10–20× slower on 2 loaded cores).
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("%s: the stacker did not converge in %d iterations", what, max_iter)
    coef, intercept = model.coef_, model.intercept_
    if n_classes == 2:
        # sklearn's binary model is one logit w·x + b for class 1; as a 2-row softmax that is
        # (−w/2, +w/2), which gives the same probabilities.
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return coef, intercept


def _labels(y: Any, n: int, n_classes: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"y must be 1-D with one class index per image ({n}), got shape {arr.shape}")
    if arr.dtype.kind not in "iu" or (n and (arr.min() < 0 or arr.max() >= n_classes)):
        raise DataError(f"y must hold integer class indices in 0..{n_classes - 1}")
    return arr.astype(np.intp)


def fit_stacking(
    member_logits: Sequence[Any],
    y: Any,
    *,
    C_reg: float = 1.0,
    class_weight: str | Mapping[int, float] | None = "balanced",
    input: str = "log_probs",
    max_iter: int = 1000,
) -> dict[str, Any]:
    """Fit the stacker on validation outputs; returns JSON-serialisable parameters.

    ``member_logits``: one (N, C) array of raw logits per member, on the same images in the same
    order; ``y``: N class indices. ``C_reg`` is the inverse L2 strength of the logistic
    regression; ``class_weight="balanced"`` weights classes inversely to their frequency, so the
    stacker optimises something close to BACC rather than accuracy. Every class must occur in
    ``y``. Returns ``{"kind": "logit_stacking", "input", "n_members", "n_classes", "coef"
    (C × M·C, member-major columns), "intercept" (C), "C_reg", "class_weight"}``.
    """
    if not (isinstance(C_reg, (int, float)) and C_reg > 0 and math.isfinite(C_reg)):
        raise EdgedermError(f"C_reg must be a positive number, got {C_reg!r}")
    X = stacking_features(member_logits, input)
    M = len(member_logits)
    C = X.shape[1] // M
    yy = _labels(y, X.shape[0], C)
    coef, intercept = _fit(X, yy, C, float(C_reg), class_weight, max_iter, "fit_stacking")
    return {
        "kind": PARAMS_KIND,
        "input": input,
        "n_members": M,
        "n_classes": C,
        "coef": coef.tolist(),
        "intercept": intercept.tolist(),
        "C_reg": float(C_reg),
        "class_weight": class_weight if class_weight is None or isinstance(class_weight, str)
        else {str(k): float(v) for k, v in dict(class_weight).items()},
    }


def apply_stacking(member_logits: Sequence[Any], params: Mapping[str, Any]) -> np.ndarray:
    """Probabilities (N, C) of the fitted stacker (numpy only; ``params`` from ``fit_stacking``,
    or the same after a JSON round trip)."""
    if params.get("kind") != PARAMS_KIND:
        raise EdgedermError(f"not logit-stacking parameters (kind={params.get('kind')!r})")
    M, C = int(params["n_members"]), int(params["n_classes"])
    if len(member_logits) != M:
        raise DataError(f"the stacker was fitted on {M} members but got {len(member_logits)}")
    _check_members(member_logits, C)
    coef = np.asarray(params["coef"], dtype=np.float64)
    intercept = np.asarray(params["intercept"], dtype=np.float64)
    if coef.shape != (C, M * C) or intercept.shape != (C,):
        raise EdgedermError(
            f"stacking parameters have coef {coef.shape} / intercept {intercept.shape}; "
            f"expected {(C, M * C)} / {(C,)}"
        )
    X = stacking_features(member_logits, str(params.get("input", "log_probs")))
    return np.exp(log_softmax(X @ coef.T + intercept))


def cross_fitted_predictions(
    member_logits: Sequence[Any],
    y: Any,
    groups: Any,
    k: int = 5,
    *,
    seed: int = 0,
    C_reg: float = 1.0,
    class_weight: str | Mapping[int, float] | None = "balanced",
    input: str = "log_probs",
    max_iter: int = 1000,
) -> np.ndarray:
    """Out-of-fold stacked probabilities (N, C) on the validation set.

    The images are split into ``k`` folds by lesion (``groups``; stratified by class as far as
    the lesions allow, ``sklearn.model_selection.StratifiedGroupKFold``); each fold is predicted
    by a stacker fitted on the other ``k − 1``. Thresholds calibrated on these probabilities see
    the stacker as it behaves on lesions it was not fitted on, instead of its optimistic
    in-sample fit (module docstring). Deploy ``fit_stacking`` on all of the validation set.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if int(k) != k or k < 2:
        raise EdgedermError(f"k must be an integer ≥ 2, got {k!r}")
    X = stacking_features(member_logits, input)
    M = len(member_logits)
    C = X.shape[1] // M
    yy = _labels(y, X.shape[0], C)
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != len(yy):
        raise DataError(f"groups must have one lesion id per image ({len(yy)}), got shape {g.shape}")
    if g.dtype == object:
        g = g.astype(str)
    n_groups = len(np.unique(g))
    if n_groups < k:
        raise DataError(f"cross-fitting with k={k} needs at least {k} lesions, got {n_groups}")
    out = np.full((len(yy), C), np.nan)
    folds = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has only n members": rare classes are expected here.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(folds.split(X, yy, g))
    for i, (tr, te) in enumerate(splits):
        coef, intercept = _fit(
            X[tr], yy[tr], C, float(C_reg), class_weight, max_iter, f"cross-fitting fold {i + 1}/{k}"
        )
        out[te] = np.exp(log_softmax(X[te] @ coef.T + intercept))
    return out
