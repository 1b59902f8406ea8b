"""Tests of edgederm.metrics: hand-computed cases, scikit-learn, the official ISIC scorer, and the
lesion-level bootstrap."""

from __future__ import annotations

import csv
import json
import math
import time
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from edgederm import metrics as M
from edgederm.errors import ClassMismatchError, DataError, EdgedermError

HAM7 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
HAM_PREVALENCE = [0.111, 0.669, 0.051, 0.033, 0.110, 0.011, 0.015]  # HAM10000 class shares


def _model(y: np.ndarray, n_classes: int, rng: np.random.Generator, signal: float = 2.0):
    """Softmax probabilities of a noisy classifier that favours the true class."""
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += signal
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _tied_probs(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Probabilities on a 0.1 grid (rows sum to 1): many ties in scores and in the argmax."""
    return rng.multinomial(10, np.full(n_classes, 1 / n_classes), size=n) / 10.0


# --------------------------------------------------------------------------------------------
# hand-computed case

# 3 classes MEL, NV, BCC; six images (truth, probs, argmax decision):
#   i0 MEL [.7 .2 .1] -> MEL ok     i1 MEL [.4 .5 .1] -> NV  miss
#   i2 NV  [.1 .8 .1] -> NV  ok     i3 NV  [.2 .6 .2] -> NV  ok
#   i4 NV  [.5 .2 .3] -> MEL miss   i5 BCC [.1 .3 .6] -> BCC ok
# confusion (rows truth): MEL [1 1 0]; NV [1 2 0]; BCC [0 0 1]
# recall MEL 1/2, NV 2/3, BCC 1  -> BACC = (1/2 + 2/3 + 1)/3 = 13/18; accuracy 4/6
# precision MEL 1/2, NV 2/3, BCC 1; F1 = 2tp/(2tp+fp+fn): MEL 2/4, NV 4/6, BCC 1 -> macro 13/18
# specificity MEL 3/4 (i4 false positive among 4 non-MEL), NV 2/3 (i1 among i0,i1,i5), BCC 1
# AUC MEL: positives .7,.4 vs negatives .1 .2 .5 .1: .7 beats 4, .4 beats 3 -> 7/8
# AUC NV: positives .8 .6 .2 vs negatives .2 .5 .3: 3 + 3 + (tie with .2 = 1/2) -> 6.5/9 = 13/18
# AUC BCC: .6 above all five negatives -> 1;  macro AUC = (7/8 + 13/18 + 1)/3 = 187/216
# top-2: only i4 misses (NV is its third score) -> 5/6
# ECE: confidences .7 .5 .8 .6 .5 .6 with correctness 1 0 1 1 0 1; .5, .6, .7, .8 fall in four
#   different bins: (1/6)(|1-.7| + 2|0-.5| + |1-.8| + 2|1-.6|) = 2.3/6
# melanoma vs rest: sensitivity 1/2, specificity 3/4
# malignant = MEL, BCC: malignant_bacc = (1/2 + 1)/2 = 3/4; triage: malignant truth i0 i1 i5,
#   decided malignant i0 i5 -> 2/3; benign truth i2 i3 i4, cleared i2 i3 -> 2/3
HAND_Y = [0, 0, 1, 1, 1, 2]
HAND_P = [
    [0.7, 0.2, 0.1],
    [0.4, 0.5, 0.1],
    [0.1, 0.8, 0.1],
    [0.2, 0.6, 0.2],
    [0.5, 0.2, 0.3],
    [0.1, 0.3, 0.6],
]
HAND_CLASSES = ["MEL", "NV", "BCC"]


def test_hand_computed_report():
    r = M.classification_report(HAND_Y, HAND_P, HAND_CLASSES)
    approx = pytest.approx
    assert r["n"] == 6
    assert r["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert r["bacc"] == approx(13 / 18)
    assert r["accuracy"] == approx(4 / 6)
    assert r["macro_f1"] == approx(13 / 18)
    assert r["sensitivity"] == approx({"MEL": 1 / 2, "NV": 2 / 3, "BCC": 1.0})
    assert r["specificity"] == approx({"MEL": 3 / 4, "NV": 2 / 3, "BCC": 1.0})
    assert r["precision"] == approx({"MEL": 1 / 2, "NV": 2 / 3, "BCC": 1.0})
    assert r["f1"] == approx({"MEL": 1 / 2, "NV": 2 / 3, "BCC": 1.0})
    assert r["support"] == {"MEL": 2, "NV": 3, "BCC": 1}
    assert r["auc"] == approx({"MEL": 7 / 8, "NV": 13 / 18, "BCC": 1.0})
    assert r["macro_auc"] == approx(187 / 216)
    assert r["top2"] == approx(5 / 6)
    assert "top3" not in r  # k must be < C
    assert r["ece"] == approx(2.3 / 6)
    assert r["mel_sensitivity"] == approx(1 / 2)
    assert r["mel_specificity"] == approx(3 / 4)
    assert r["malignant_bacc"] == approx(3 / 4)
    assert r["malignant_sensitivity"] == approx(2 / 3)
    assert r["malignant_specificity"] == approx(2 / 3)
    assert r["top1_ties"] == 0
    json.dumps(r, allow_nan=False)  # strict JSON


def test_explicit_decision_overrides_argmax():
    # A clinical threshold that calls i1 melanoma: decision metrics change, score metrics do not.
    y_pred = [0, 0, 1, 1, 0, 2]
    r = M.classification_report(HAND_Y, HAND_P, HAND_CLASSES, y_pred=y_pred)
    assert r["mel_sensitivity"] == 1.0
    assert r["confusion_matrix"] == [[2, 0, 0], [1, 2, 0], [0, 0, 1]]
    assert r["macro_auc"] == pytest.approx(187 / 216)
    assert r["ece"] == pytest.approx(2.3 / 6)  # ECE is about argmax confidence


def test_perfect_and_constant_predictors():
    rng = np.random.default_rng(1)
    y = rng.choice(7, 300, p=HAM_PREVALENCE)
    y[:7] = np.arange(7)
    perfect = M.classification_report(y, np.eye(7)[y], HAM7)
    for key in ("bacc", "accuracy", "macro_f1", "top2", "top3", "macro_auc", "mel_sensitivity",
                "mel_specificity", "malignant_bacc", "malignant_sensitivity",
                "malignant_specificity"):
        assert perfect[key] == 1.0, key
    assert perfect["ece"] == 0.0

    # Uniform probabilities: argmax is always the first class (MEL), every score ties.
    uniform = M.classification_report(y, np.full((300, 7), 1 / 7), HAM7)
    assert uniform["bacc"] == pytest.approx(1 / 7)
    assert uniform["accuracy"] == pytest.approx(np.mean(y == 0))
    assert all(a == 0.5 for a in uniform["auc"].values())
    assert uniform["top1_ties"] == 300
    assert uniform["mel_sensitivity"] == 1.0 and uniform["mel_specificity"] == 0.0
    assert uniform["ece"] == pytest.approx(abs(np.mean(y == 0) - 1 / 7))

    # Always NV, confidently: recall 1 for NV, 0 elsewhere.
    nv = np.full((300, 7), 0.01)
    nv[:, 1] = 0.94
    r = M.classification_report(y, nv, HAM7)
    assert r["bacc"] == pytest.approx(1 / 7)
    assert r["sensitivity"]["NV"] == 1.0 and r["specificity"]["NV"] == 0.0
    assert r["precision"]["MEL"] is None  # never predicted: undefined, not 0
    assert r["f1"]["MEL"] == 0.0
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, np.ones_like(y), average="macro"))


def test_absent_classes():
    rng = np.random.default_rng(2)
    y = rng.choice([0, 1, 4, 5], size=200)  # BCC, AKIEC, VASC never occur
    p = _model(y, 7, rng, signal=1.0)
    y_pred = p.argmax(axis=1)
    assert set(y_pred) - set(y)  # some decisions fall in absent classes
    r = M.classification_report(y, p, HAM7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about y_pred classes absent from y_true
        assert r["bacc"] == pytest.approx(skm.balanced_accuracy_score(y, y_pred))
    assert r["bacc"] == pytest.approx(np.mean([r["sensitivity"][c] for c in
                                               ("MEL", "NV", "BKL", "DF")]))
    for c in ("BCC", "AKIEC", "VASC"):
        assert r["sensitivity"][c] is None
        assert r["auc"][c] is None
        assert r["support"][c] == 0
    assert r["macro_auc"] == pytest.approx(
        np.mean([skm.roc_auc_score(y == i, p[:, i]) for i in (0, 1, 4, 5)])
    )
    assert r["malignant_bacc"] == r["sensitivity"]["MEL"]  # BCC/AKIEC absent: left out
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"))
    json.dumps(r, allow_nan=False)

    # A class that is neither true nor predicted has no F1 and stays out of the macro F1.
    p2 = p.copy()
    p2[:, 6] = 0.0
    p2 /= p2.sum(axis=1, keepdims=True)
    r2 = M.classification_report(y, p2, HAM7)
    assert r2["f1"]["VASC"] is None
    assert r2["macro_f1"] == pytest.approx(skm.f1_score(y, p2.argmax(axis=1), average="macro"))


def test_binary_and_ph2_tasks():
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.1).astype(int)
    p = _model(y, 2, rng)
    r = M.classification_report(y, p, ["benign", "malignant"])
    assert "mel_sensitivity" not in r and "top2" not in r
    assert r["malignant_sensitivity"] == r["sensitivity"]["malignant"]
    assert r["malignant_specificity"] == r["specificity"]["malignant"]
    assert r["malignant_bacc"] == r["sensitivity"]["malignant"]
    assert r["auc"]["malignant"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert r["auc"]["benign"] == pytest.approx(r["auc"]["malignant"])  # same ranking, flipped

    y3 = rng.integers(0, 3, 200)
    r3 = M.classification_report(y3, _model(y3, 3, rng), ["common_nevus", "atypical_nevus",
                                                          "melanoma"])
    assert r3["mel_sensitivity"] == r3["sensitivity"]["melanoma"]
    assert r3["malignant_bacc"] == r3["sensitivity"]["melanoma"]

    # No malignant / melanoma class at all: the keys are left out, nothing breaks.
    r4 = M.classification_report(y3, _model(y3, 3, rng), ["a", "b", "c"], melanoma=None)
    assert not any(k.startswith(("mel_", "malignant_")) for k in r4)


# --------------------------------------------------------------------------------------------
# scikit-learn agreement


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, C = 500, 7
    y = rng.choice(C, n, p=HAM_PREVALENCE)
    y[:C] = np.arange(C)
    p = _tied_probs(n, C, rng)
    r = M.classification_report(y, p, HAM7)
    assert r["top1_ties"] > 50  # the data really has tied top scores
    y_pred = p.argmax(axis=1)
    labels = list(range(C))
    assert r["bacc"] == pytest.approx(skm.balanced_accuracy_score(y, y_pred), abs=1e-12)
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, y_pred), abs=1e-12)
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"), abs=1e-12)
    assert r["confusion_matrix"] == skm.confusion_matrix(y, y_pred, labels=labels).tolist()
    for k in (2, 3):
        assert r[f"top{k}"] == pytest.approx(
            skm.top_k_accuracy_score(y, p, k=k, labels=labels), abs=1e-12
        )
    assert r["macro_auc"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels), abs=1e-12
    )
    rec = skm.recall_score(y, y_pred, average=None, labels=labels)
    prec = skm.precision_score(y, y_pred, average=None, labels=labels, zero_division=np.nan)
    f1 = skm.f1_score(y, y_pred, average=None, labels=labels)
    for i, c in enumerate(HAM7):
        assert r["auc"][c] == pytest.approx(skm.roc_auc_score(y == i, p[:, i]), abs=1e-12)
        assert r["sensitivity"][c] == pytest.approx(rec[i], abs=1e-12)
        assert r["f1"][c] == pytest.approx(f1[i], abs=1e-12)
        if np.isnan(prec[i]):
            assert r["precision"][c] is None
        else:
            assert r["precision"][c] == pytest.approx(prec[i], abs=1e-12)
        # specificity = recall of "not c" in the one-vs-rest problem
        spec = skm.recall_score(y != i, y_pred != i)
        assert r["specificity"][c] == pytest.approx(spec, abs=1e-12)


def test_custom_decision_agrees_with_sklearn():
    rng = np.random.default_rng(5)
    y = rng.choice(7, 400, p=HAM_PREVALENCE)
    p = _model(y, 7, rng, signal=1.0)
    y_pred = rng.integers(0, 7, 400)  # any decision rule, unrelated to probs
    r = M.classification_report(y, p, HAM7, y_pred=y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert r["bacc"] == pytest.approx(skm.balanced_accuracy_score(y, y_pred), abs=1e-12)
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"), abs=1e-12)


# --------------------------------------------------------------------------------------------
# the official ISIC challenge scorer


def _isic_score(y: np.ndarray, p: np.ndarray, classes: list[str]):
    pd = pytest.importorskip("pandas")
    scoring = pytest.importorskip("isic_challenge_scoring.classification")
    ids = [f"ISIC_{i:07d}" for i in range(len(y))]
    truth = pd.DataFrame(np.eye(len(classes))[y], index=ids, columns=classes)
    pred = pd.DataFrame(p, index=ids, columns=classes)
    weights = pd.DataFrame({"score_weight": 1.0, "validation_weight": 1.0}, index=ids)
    with warnings.catch_warnings():
        # the scorer's own pandas/rdp deprecation warnings, tens of thousands of them
        warnings.simplefilter("ignore")
        return scoring.ClassificationScore(
            truth, pred, weights, scoring.ClassificationMetric.BALANCED_ACCURACY
        )


def _assert_matches_isic(y: np.ndarray, p: np.ndarray, classes: list[str]) -> None:
    ours = M.classification_report(y, p, classes)
    score = _isic_score(y, p, classes)
    assert ours["bacc"] == pytest.approx(score.overall, abs=1e-6)
    assert ours["bacc"] == pytest.approx(score.aggregate["balanced_accuracy"], abs=1e-6)
    assert ours["macro_auc"] == pytest.approx(score.macro_average["auc"], abs=1e-6)
    for c in classes:
        assert ours["auc"][c] == pytest.approx(score.per_category.loc[c, "auc"], abs=1e-6)
        # The scorer's per-category sensitivity/specificity threshold each column at 0.5.
        i = classes.index(c)
        sens, spec = M.operating_point(y == i, p[:, i], 0.5)
        assert sens == pytest.approx(score.per_category.loc[c, "sensitivity"], abs=1e-6)
        assert spec == pytest.approx(score.per_category.loc[c, "specificity"], abs=1e-6)


def test_isic_scorer_random_probabilities():
    rng = np.random.default_rng(10)
    y = rng.integers(0, 7, 300)
    p = rng.dirichlet(np.full(7, 0.3), 300)  # peaked rows so some exceed 0.5
    _assert_matches_isic(y, p, HAM7)


def test_isic_scorer_realistic_imbalanced():
    rng = np.random.default_rng(11)
    y = rng.choice(7, 1500, p=HAM_PREVALENCE)
    p = _model(y, 7, rng, signal=2.5)
    _assert_matches_isic(y, p, HAM7)

    # The comparison is not vacuous: a different prediction changes both numbers, consistently.
    worse = _model(y, 7, rng, signal=0.8)
    ours, theirs = M.classification_report(y, worse, HAM7), _isic_score(y, worse, HAM7)
    base = _isic_score(y, p, HAM7)
    assert abs(theirs.overall - base.overall) > 0.05
    assert abs(theirs.macro_average["auc"] - base.macro_average["auc"]) > 0.05
    assert ours["bacc"] == pytest.approx(theirs.overall, abs=1e-6)
    assert ours["macro_auc"] == pytest.approx(theirs.macro_average["auc"], abs=1e-6)


def test_isic_scorer_ties_and_absent_classes():
    pd = pytest.importorskip("pandas")
    isic_metrics = pytest.importorskip("isic_challenge_scoring.metrics")
    rng = np.random.default_rng(12)
    y = rng.choice(7, 400, p=HAM_PREVALENCE)
    y[:7] = np.arange(7)
    p = _tied_probs(400, 7, rng)
    score = _isic_score(y, p, HAM7)
    ours = M.classification_report(y, p, HAM7)
    # Mid-rank AUC ties are handled identically.
    assert ours["macro_auc"] == pytest.approx(score.macro_average["auc"], abs=1e-6)
    # Documented difference: the scorer counts a tied top score as wrong ("undecided"), argmax
    # takes the first class. Forcing tied rows wrong reproduces the scorer exactly.
    assert ours["top1_ties"] > 0
    assert ours["bacc"] != pytest.approx(score.overall, abs=1e-6)
    tied = (p == p.max(axis=1, keepdims=True)).sum(axis=1) > 1
    y_pred = np.where(tied, (y + 1) % 7, p.argmax(axis=1))
    forced = M.classification_report(y, p, HAM7, y_pred=y_pred)
    assert forced["bacc"] == pytest.approx(score.overall, abs=1e-6)

    # Absent classes: the scorer's NaN recalls are skipped, as ours are.
    y2 = rng.choice([0, 1, 4], size=300)
    p2 = _model(y2, 7, rng, signal=1.0)
    ids = [str(i) for i in range(300)]
    truth = pd.DataFrame(np.eye(7)[y2], index=ids, columns=HAM7)
    pred = pd.DataFrame(p2, index=ids, columns=HAM7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = isic_metrics.balanced_multiclass_accuracy(truth, pred, pd.Series(1.0, index=ids))
    assert M.classification_report(y2, p2, HAM7)["bacc"] == pytest.approx(theirs, abs=1e-6)


@pytest.mark.realdata
def test_isic_scorer_and_bootstrap_on_real_ham10000_labels(data_root):
    from conftest import real_data_set

    meta = real_data_set(data_root, "metadata/HAM10000_metadata.csv")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.array([HAM7.index(r["dx"].upper()) for r in rows])
    lesions = np.array([r["lesion_id"] for r in rows])
    assert len(y) == 10015 and len(set(lesions)) == 7470
    rng = np.random.default_rng(13)
    # Images of one lesion look alike, so a model's errors on them are correlated: share the
    # noise within a lesion.
    _, inv = np.unique(lesions, return_inverse=True)
    noise = rng.normal(size=(inv.max() + 1, 7))[inv] + 0.3 * rng.normal(size=(len(y), 7))
    noise[np.arange(len(y)), y] += 2.0
    p = np.exp(noise) / np.exp(noise).sum(axis=1, keepdims=True)
    _assert_matches_isic(y, p, HAM7)

    keys = ["bacc", "mel_sensitivity", "macro_auc"]
    by_lesion = M.bootstrap_ci(y, p, HAM7, groups=lesions, n_boot=300, metrics=keys)
    by_image = M.bootstrap_ci(y, p, HAM7, groups=None, n_boot=300, metrics=keys)
    for k in keys:
        assert by_lesion[k]["value"] == by_image[k]["value"]
        assert by_lesion[k]["lo"] <= by_lesion[k]["value"] <= by_lesion[k]["hi"]
    width = {k: (d[k]["hi"] - d[k]["lo"]) for d in (by_lesion,) for k in keys}
    width_img = {k: (by_image[k]["hi"] - by_image[k]["lo"]) for k in keys}
    # 10015 images are only 7470 lesions: the honest interval is wider.
    assert width["bacc"] > width_img["bacc"]


# --------------------------------------------------------------------------------------------
# bootstrap


def _grouped_data(
    n_lesions: int, per_lesion: int, seed: int, signal: float = 1.5, prevalence=HAM_PREVALENCE
):
    rng = np.random.default_rng(seed)
    y_l = rng.choice(7, n_lesions, p=prevalence)
    y_l[:7] = np.arange(7)
    p_l = _model(y_l, 7, rng, signal=signal)
    lesion_ids = np.array([f"HAM_{i:07d}" for i in range(n_lesions)])
    rep = np.repeat(np.arange(n_lesions), per_lesion)
    return y_l[rep], p_l[rep], lesion_ids[rep]


def test_bootstrap_value_equals_report_and_ci_contains_it():
    y, p, g = _grouped_data(600, 2, seed=20)
    ci = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=300)
    r = M.classification_report(y, p, HAM7)
    assert set(ci) == set(M.metric_names(HAM7))
    for name, e in ci.items():
        if "/" in name:
            kind, cls = name.split("/")
            expected = r[kind][cls]
        else:
            expected = r[name]
        assert e["value"] == pytest.approx(expected, abs=1e-12), name
        assert e["lo"] <= e["value"] <= e["hi"], name
        assert e["level"] == 0.95
        # DF/VASC have a handful of lesions here: a few resamples miss them
        assert e["n_used"] >= (300 if name in ("accuracy", "top2", "top3", "ece") else 280)
    assert M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=50, with_auc=False).keys().isdisjoint(
        {"macro_auc", "auc/MEL"}
    )


def test_bootstrap_matches_naive_resampling_loop():
    """The vectorised engine against the obvious implementation: expand each resample's drawn
    lesions into images and call classification_report on them."""
    y, p, g = _grouped_data(80, 3, seed=21)
    y_pred = p.argmax(axis=1)
    y_pred[::7] = 0  # a decision that differs from argmax
    n_boot = 40
    ci = M.bootstrap_ci(y, p, HAM7, groups=g, y_pred=y_pred, n_boot=n_boot, seed=3)
    uniq, inv = np.unique(g, return_inverse=True)
    draws = np.concatenate(list(M._resample_chunks(len(uniq), n_boot, 3, chunk=7)))
    assert draws.shape == (n_boot, len(uniq)) and (draws.sum(axis=1) == len(uniq)).all()
    members = [np.flatnonzero(inv == k) for k in range(len(uniq))]
    samples: dict[str, list[float]] = {k: [] for k in ci}
    reports = []
    for row in draws:
        idx = np.concatenate([np.tile(members[k], int(c)) for k, c in enumerate(row) if c])
        r = M.classification_report(y[idx], p[idx], HAM7, y_pred=y_pred[idx])
        reports.append(r)
        for name in ci:
            v = r[name.split("/")[0]][name.split("/")[1]] if "/" in name else r[name]
            samples[name].append(np.nan if v is None else v)
    # A macro average is skipped in a resample where one of its classes is undefined (rather
    # than averaged over fewer classes, which the naive report would do).
    components = {"bacc": ("sensitivity", HAM7), "macro_f1": ("f1", HAM7),
                  "macro_auc": ("auc", HAM7), "malignant_bacc": ("sensitivity",
                                                                 ["MEL", "BCC", "AKIEC"])}
    for name, (kind, cls) in components.items():
        for i, r in enumerate(reports):
            if any(r[kind][c] is None for c in cls):
                samples[name][i] = np.nan
    skipped = np.isnan(samples["bacc"]).sum()
    assert 0 < skipped < n_boot  # the case exercises skipping
    for name, e in ci.items():
        s = np.array(samples[name])
        ok = s[~np.isnan(s)]
        assert e["n_used"] == len(ok), name
        lo, hi = np.percentile(ok, [2.5, 97.5])
        assert e["lo"] == pytest.approx(lo, abs=1e-12), name
        assert e["hi"] == pytest.approx(hi, abs=1e-12), name


def test_bootstrap_deterministic_and_seed_dependent():
    y, p, g = _grouped_data(300, 2, seed=22)
    a = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=200, seed=7)
    b = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=200, seed=7)
    c = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=200, seed=8)
    assert a == b
    assert a["bacc"]["lo"] != c["bacc"]["lo"] or a["bacc"]["hi"] != c["bacc"]["hi"]


def test_bootstrap_width_shrinks_with_more_data():
    keys = ["bacc", "accuracy", "macro_auc", "mel_sensitivity"]
    # Balanced classes: with one or two lesions of a class, the bootstrap is degenerate.
    uniform = [1 / 7] * 7
    small = M.bootstrap_ci(*_grouped_data(210, 1, seed=23, prevalence=uniform)[:2], HAM7,
                           groups=None, n_boot=400, metrics=keys)
    y, p, g = _grouped_data(2100, 1, seed=23, prevalence=uniform)
    large = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=400, metrics=keys)
    for k in keys:
        w_small = small[k]["hi"] - small[k]["lo"]
        w_large = large[k]["hi"] - large[k]["lo"]
        assert w_large < 0.6 * w_small, k  # ~1/sqrt(10) expected


def test_bootstrap_resamples_lesions_not_images():
    # Every lesion has 5 identical images: 5 × 400 images carry the evidence of 400 lesions.
    y, p, g = _grouped_data(400, 5, seed=24)
    keys = ["bacc", "accuracy", "macro_auc", "ece", "mel_sensitivity", "auc/MEL"]
    by_lesion = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=400, metrics=keys)
    by_image = M.bootstrap_ci(y, p, HAM7, groups=None, n_boot=400, metrics=keys)
    for k in keys:
        w_lesion = by_lesion[k]["hi"] - by_lesion[k]["lo"]
        w_image = by_image[k]["hi"] - by_image[k]["lo"]
        assert w_lesion > 1.6 * w_image, k  # ~sqrt(5) expected
    # Exactly: duplicating each lesion's image changes nothing when lesions are resampled.
    once = slice(None, None, 5)
    dedup = M.bootstrap_ci(y[once], p[once], HAM7, groups=g[once], n_boot=400, metrics=keys)
    for k in keys:
        for field in ("value", "lo", "hi"):
            assert by_lesion[k][field] == pytest.approx(dedup[k][field], abs=1e-12), (k, field)


def test_bootstrap_skips_undefined_resamples():
    # One melanoma lesion (3 images) among 60 lesions: a resample misses it with probability
    # (1 - 1/60)^60 ≈ 0.36.
    rng = np.random.default_rng(25)
    y_l = rng.integers(1, 7, 60)
    y_l[0] = 0
    y_l[1:7] = np.arange(1, 7)
    rep = np.repeat(np.arange(60), 3)
    y, g = y_l[rep], rep.astype(str)
    p = _model(y, 7, rng)
    n_boot = 500
    ci = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=n_boot)
    used = ci["mel_sensitivity"]["n_used"]
    assert 0.55 * n_boot < used < 0.75 * n_boot
    assert ci["sensitivity/MEL"]["n_used"] == used
    assert ci["auc/MEL"]["n_used"] == used
    assert ci["bacc"]["n_used"] <= used  # BACC needs every class of the full data
    assert ci["macro_auc"]["n_used"] <= used
    assert ci["accuracy"]["n_used"] == n_boot
    assert ci["mel_specificity"]["n_used"] == n_boot

    # Undefined on the data itself: no melanoma at all.
    keep = y != 0
    ci2 = M.bootstrap_ci(y[keep], p[keep], HAM7, groups=g[keep], n_boot=50)
    assert ci2["mel_sensitivity"] == {"value": None, "lo": None, "hi": None, "n_used": 0,
                                      "level": 0.95}
    assert ci2["bacc"]["n_used"] > 0  # BACC over the present classes is fine


def test_bootstrap_timing_3000_images():
    y, p, g = _grouped_data(2400, 1, seed=26)
    rng = np.random.default_rng(26)
    extra = rng.integers(0, 2400, 600)  # 600 second images of existing lesions
    y, p, g = np.r_[y, y[extra]], np.r_[p, p[extra]], np.r_[g, g[extra]]
    assert p.shape == (3000, 7)
    t0 = time.perf_counter()
    ci = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=1000)
    elapsed = time.perf_counter() - t0
    t0 = time.perf_counter()
    M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=1000, with_auc=False)
    elapsed_no_auc = time.perf_counter() - t0
    print(f"bootstrap_ci N=3000 C=7 1000 resamples: {elapsed:.2f} s with AUC, "
          f"{elapsed_no_auc:.2f} s without")
    assert ci["macro_auc"]["n_used"] > 900
    assert elapsed < 15.0  # ~0.5 s on 2 cores; a per-resample Python loop would take minutes


# --------------------------------------------------------------------------------------------
# paired comparison, McNemar


def test_paired_bootstrap_identical_models():
    y, p, g = _grouped_data(300, 2, seed=30)
    d = p.argmax(axis=1)
    out = M.paired_bootstrap(y, d, d.copy(), HAM7, groups=g, n_boot=300)
    assert out["diff"] == 0.0 and out["lo"] == 0.0 and out["hi"] == 0.0
    assert out["p_value"] == 1.0
    assert out["a"] == out["b"] == M.classification_report(y, p, HAM7)["bacc"]


def test_paired_bootstrap_detects_a_worse_model():
    y, p, g = _grouped_data(500, 2, seed=31, signal=2.5)
    rng = np.random.default_rng(31)
    good = p.argmax(axis=1)
    bad = good.copy()
    # Break 15% of lesions: all their images get a wrong decision.
    broken = np.isin(g, rng.choice(np.unique(g), 75, replace=False))
    bad[broken] = (y[broken] + 1) % 7
    worse = M.paired_bootstrap(y, good, bad, HAM7, groups=g, n_boot=500)
    assert worse["diff"] < 0 and worse["hi"] < 0 and worse["p_value"] < 0.01
    better = M.paired_bootstrap(y, bad, good, HAM7, groups=g, n_boot=500)
    assert better["diff"] == pytest.approx(-worse["diff"]) and better["lo"] > 0

    # Score metrics need probabilities for both models.
    noisy = _model(y, 7, rng, signal=0.5)
    auc = M.paired_bootstrap(y, p, noisy, HAM7, groups=g, metric="macro_auc", n_boot=300)
    assert auc["hi"] < 0
    assert auc["a"] == pytest.approx(M.classification_report(y, p, HAM7)["macro_auc"])
    with pytest.raises(EdgedermError, match="probabilities"):
        M.paired_bootstrap(y, good, bad, HAM7, groups=g, metric="macro_auc")


def test_mcnemar_exact_by_hand_and_scipy():
    from scipy.stats import binomtest

    # b = 10 (A right, B wrong), c = 2, 88 concordant: exact two-sided binomial,
    # p = 2 * P(X <= 2 | n=12, 1/2) = 2 * (1 + 12 + 66) / 4096 = 158 / 4096.
    y = np.zeros(100, dtype=int)
    a = np.r_[np.zeros(10), np.ones(2), np.zeros(80), np.ones(8)].astype(int)
    b = np.r_[np.ones(10), np.zeros(2), np.zeros(80), np.ones(8)].astype(int)
    out = M.mcnemar(y, a, b)
    assert (out["b"], out["c"]) == (10, 2)
    assert out["method"] == "exact binomial"
    assert out["p_value"] == pytest.approx(158 / 4096, abs=1e-12)
    assert out["p_value"] == pytest.approx(binomtest(10, 12, 0.5).pvalue, abs=1e-12)

    rng = np.random.default_rng(32)
    for _ in range(20):
        y = rng.integers(0, 3, 60)
        a = np.where(rng.random(60) < 0.8, y, (y + 1) % 3)
        b = np.where(rng.random(60) < 0.7, y, (y + 2) % 3)
        out = M.mcnemar(y, a, b)
        n = out["b"] + out["c"]
        if 0 < n < 25:
            assert out["p_value"] == pytest.approx(binomtest(out["b"], n, 0.5).pvalue)

    assert M.mcnemar(y, y, y)["p_value"] == 1.0


def test_mcnemar_chi_square_by_hand():
    # b = 30, c = 12: chi2 = (|30 - 12| - 1)^2 / 42 = 289/42; p = erfc(sqrt(chi2 / 2)) for 1 df.
    y = np.zeros(100, dtype=int)
    a = np.r_[np.zeros(30), np.ones(12), np.zeros(58)].astype(int)
    b = np.r_[np.ones(30), np.zeros(12), np.zeros(58)].astype(int)
    out = M.mcnemar(y, a, b)
    assert out["method"].startswith("chi-square")
    assert out["statistic"] == pytest.approx(289 / 42)
    assert out["p_value"] == pytest.approx(math.erfc(math.sqrt(289 / 42 / 2)), rel=1e-9)
    assert 0.008 < out["p_value"] < 0.01


# --------------------------------------------------------------------------------------------
# calibration, operating points, table, errors


def test_ece_against_reference_loop():
    rng = np.random.default_rng(40)
    y = rng.integers(0, 7, 1000)
    p = _model(y, 7, rng, signal=1.2)
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    ref = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ref += m.mean() * abs(correct[m].mean() - conf[m].mean())
    assert M.expected_calibration_error(p, y) == pytest.approx(ref, abs=1e-12)
    assert M.classification_report(y, p, HAM7)["ece"] == pytest.approx(ref, abs=1e-12)
    assert M.expected_calibration_error(HAND_P, HAND_Y) == pytest.approx(2.3 / 6)
    # A confidence on a bin edge goes to the lower bin. Two bins (0, .5], (.5, 1]: a correct
    # 0.5 alone in bin 0 and a wrong 0.9 in bin 1 give (|1 - .5| + |0 - .9|) / 2 = 0.7; putting
    # 0.5 into the upper bin would give |1/2 - .7| = 0.2.
    edge = np.array([[0.5, 0.3, 0.2], [0.9, 0.1, 0.0]])
    assert M.expected_calibration_error(edge, [0, 1], n_bins=2) == pytest.approx(0.7)
    assert M.expected_calibration_error(edge, [0, 1], n_bins=1) == pytest.approx(0.2)


def test_operating_point():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.5, 0.2, 0.5, 0.4, 0.1, 0.0])
    assert M.operating_point(y, s, 0.5) == (2 / 3, 3 / 4)  # >= threshold is positive
    assert M.operating_point(y, s, 0.0) == (1.0, 0.0)
    assert M.operating_point(y.astype(bool), s, 1.0) == (0.0, 1.0)
    sens, spec = M.operating_point(np.ones(3, int), s[:3], 0.5)
    assert sens == 2 / 3 and math.isnan(spec)
    # Agrees with the ROC curve sklearn draws.
    rng = np.random.default_rng(41)
    yy, ss = rng.integers(0, 2, 300), rng.integers(0, 20, 300) / 20
    fpr, tpr, thr = skm.roc_curve(yy, ss)
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):
        assert M.operating_point(yy, ss, th) == pytest.approx((t, 1 - f))


def test_format_metrics_table():
    y, p, g = _grouped_data(200, 1, seed=42)
    ci = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=100, metrics=["bacc", "mel_sensitivity"])
    table = M.format_metrics_table(ci)
    lines = table.splitlines()
    assert lines[0] == "| metric | value | 95% CI |"
    assert lines[2] == (
        f"| bacc | {ci['bacc']['value']:.3f} | {ci['bacc']['lo']:.3f} – {ci['bacc']['hi']:.3f} |"
    )
    assert len(lines) == 4
    ci90 = M.bootstrap_ci(y, p, HAM7, groups=g, n_boot=50, alpha=0.1, metrics=["bacc"])
    assert M.format_metrics_table(ci90).startswith("| metric | value | 90% CI |")
    # A plain report: scalars, per-class rows, undefined as n/a, no confusion matrix.
    r = M.classification_report(y[y != 6], p[y != 6], HAM7)
    text = M.format_metrics_table(r)
    assert "| sensitivity/VASC | n/a | — |" in text
    assert "| n | " in text and "confusion" not in text


def test_format_ci_is_the_one_ci_text():
    assert M.format_ci(0.8123, 0.77, 0.8504) == "0.812 [0.770–0.850]"
    assert M.format_ci(0.8123, 0.77, 0.8504, digits=2) == "0.81 [0.77–0.85]"
    # Differences: signed, "to" instead of an en dash next to a minus sign.
    assert M.format_ci(0.012, -0.004, 0.03, signed=True) == "+0.012 [-0.004 to +0.030]"
    # No interval (or an undefined bound): the value alone; no value: n/a.
    assert M.format_ci(0.5) == M.format_ci(0.5, None, 0.6) == M.format_ci(0.5, math.nan, 0.6) == "0.500"
    assert M.format_ci(None, 0.1, 0.2) == M.format_number(math.nan) == M.format_number(True) == "n/a"
    ci = M.bootstrap_ci(*_grouped_data(120, 1, seed=3)[:2], HAM7, groups=_grouped_data(120, 1, seed=3)[2],
                        n_boot=30, metrics=["bacc"])
    e = ci["bacc"]
    assert M.format_ci_entry(e) == f"{e['value']:.3f} [{e['lo']:.3f}–{e['hi']:.3f}]"
    assert M.format_ci_entry({"diff": -0.02, "lo": -0.05, "hi": 0.01}, key="diff", signed=True) == "-0.020 [-0.050 to +0.010]"
    assert M.format_ci_entry(0.25, digits=1) == "0.2"


def test_input_errors_are_one_line_edgederm_errors():
    p = np.array(HAND_P)
    cases = [
        (ClassMismatchError, lambda: M.classification_report(HAND_Y, p, ["A", "B"])),
        (ClassMismatchError, lambda: M.classification_report([0, 0, 1, 1, 1, 3], p, HAND_CLASSES)),
        (ClassMismatchError, lambda: M.classification_report(HAND_Y, p, ["A", "A", "B"])),
        (DataError, lambda: M.classification_report(HAND_Y, np.log(p), HAND_CLASSES)),
        (DataError, lambda: M.classification_report(HAND_Y[:5], p, HAND_CLASSES)),
        (DataError, lambda: M.classification_report([0.5] * 6, p, HAND_CLASSES)),
        (DataError, lambda: M.classification_report(HAND_Y, p * np.nan, HAND_CLASSES)),
        (DataError, lambda: M.bootstrap_ci(HAND_Y, p, HAND_CLASSES, groups=["a"] * 5)),
        (EdgedermError, lambda: M.bootstrap_ci(HAND_Y, p, HAND_CLASSES, groups=None,
                                               metrics=["top3"])),
        (EdgedermError, lambda: M.bootstrap_ci(HAND_Y, p, HAND_CLASSES, groups=None, n_boot=0)),
    ]
    for err, call in cases:
        with pytest.raises(err) as info:
            call()
        assert "\n" not in str(info.value)
    assert "softmax" in str(pytest.raises(DataError, M.classification_report, HAND_Y, np.log(p),
                                          HAND_CLASSES).value)
