"""Clinical threshold calibration (edgederm.thresholds) on constructed score distributions whose
answer is known, checked against the card's own decision rule."""

from __future__ import annotations

import copy
import inspect
import json
import logging
from importlib import resources

import jsonschema
import numpy as np
import pytest
import yaml

from edgederm.decision import decide
from edgederm.errors import EdgedermError
from edgederm.metrics import operating_point
from edgederm.thresholds import (
    Calibration,
    FallbackLevel,
    TargetSpec,
    ThresholdConfig,
    calibrate,
    clinical_report,
    format_clinical_table,
)

HAM7 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
MEL, NV, BCC, AKIEC, BKL = 0, 1, 2, 3, 4
MEL_ONLY = ThresholdConfig(
    targets=[TargetSpec("MEL", 0.85, 0.85)], fallbacks=[FallbackLevel("relaxed", 0.80, 0.80)]
)


def _row(mel: float, akiec: float, rest: int, extra: dict[int, float] | None = None) -> np.ndarray:
    """A probability row: the MEL and AKIEC scores, ``extra`` ones, the remainder on ``rest``."""
    p = np.zeros(len(HAM7))
    p[MEL], p[AKIEC] = mel, akiec
    for c, v in (extra or {}).items():
        p[c] = v
    p[rest] += 1.0 - p.sum()
    assert p.min() >= 0
    return p


def _sens_spec(y: np.ndarray, pred: np.ndarray, c: int) -> tuple[float, float]:
    pos = y == c
    return float((pred[pos] == c).mean()), float((pred[~pos] != c).mean())


def _model_probs(y: np.ndarray, rng: np.random.Generator, signal: float = 2.0) -> np.ndarray:
    logits = rng.normal(size=(len(y), len(HAM7)))
    logits[np.arange(len(y)), y] += signal
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _ham_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(len(HAM7), n, p=[0.15, 0.55, 0.06, 0.10, 0.10, 0.02, 0.02])


# --------------------------------------------------------------------------------------------
# the fallback chain on constructed distributions


def test_strict_threshold_found_and_met_under_the_rule() -> None:
    rng = np.random.default_rng(0)
    rows, y = [], []
    # 40 melanomas: 36 score 0.30–0.90 (below 0.5 NV is their argmax), 4 score under 0.10.
    for s in np.r_[rng.uniform(0.30, 0.90, 36), rng.uniform(0.02, 0.10, 4)]:
        rows.append(_row(s, 0.0, NV)); y.append(MEL)
    # 160 others: 150 score under 0.25, 10 between 0.30 and 0.45.
    for s in np.r_[rng.uniform(0.0, 0.25, 150), rng.uniform(0.30, 0.45, 10)]:
        c = int(rng.choice([NV, BKL]))
        rows.append(_row(s, 0.0, c)); y.append(c)
    p, y = np.array(rows), np.array(y)
    # argmax alone misses the melanomas scored under 0.5: the threshold is needed.
    assert _sens_spec(y, p.argmax(1), MEL)[0] < 0.85

    cal = calibrate(y, p, HAM7, MEL_ONLY)
    d = cal.decision
    assert d["rule"] == "priority_thresholds" and d["priority"] == ["MEL"]
    assert cal.fallback == {"MEL": "strict"} and d["fallback_fired"] is None
    sens, spec = _sens_spec(y, decide(p, HAM7, d), MEL)
    assert sens >= 0.85 and spec >= 0.85
    assert cal.achieved["MEL"]["sens"] == pytest.approx(sens)
    assert cal.achieved["MEL"]["spec"] == pytest.approx(spec)
    assert d["calibrated_on"]["split"] == "val" and d["calibrated_on"]["n"] == len(y)
    # The recorded threshold sits strictly between validation scores, never on one.
    assert not np.isclose(p[:, MEL], d["thresholds"]["MEL"]).any()


def test_relaxed_level_fires_when_no_strict_threshold_exists() -> None:
    rng = np.random.default_rng(1)
    rows, y = [], []
    # 83 of 100 melanomas score high, 17 low; 17 of 100 nevi score high, 83 low: every threshold
    # has min(sens, spec) ≤ 0.83 — under 0.85, over 0.80.
    for s in np.r_[rng.uniform(0.55, 0.90, 83), rng.uniform(0.05, 0.20, 17)]:
        rows.append(_row(s, 0.0, NV)); y.append(MEL)
    for s in np.r_[rng.uniform(0.55, 0.90, 17), rng.uniform(0.0, 0.20, 83)]:
        rows.append(_row(s, 0.0, NV)); y.append(NV)
    p, y = np.array(rows), np.array(y)
    cal = calibrate(y, p, HAM7, MEL_ONLY)
    assert cal.fallback == {"MEL": "relaxed"}
    assert cal.decision["fallback_fired"] == "relaxed"
    assert cal.rule == "priority_thresholds"
    sens, spec = _sens_spec(y, decide(p, HAM7, cal.decision), MEL)
    assert 0.80 <= sens < 0.85 or 0.80 <= spec < 0.85
    assert sens >= 0.80 and spec >= 0.80
    assert cal.achieved["MEL"]["min_sens"] == 0.80 and cal.achieved["MEL"]["min_spec"] == 0.80
    # The held-out report judges against the strict promise, not the relaxed floors.
    rep = clinical_report(y, p, HAM7, cal.decision, n_boot=50)
    assert rep["targets"]["MEL"]["met"] is False
    assert rep["targets"]["MEL"]["fallback"] == "relaxed"


def test_argmax_fallback_when_no_level_is_reachable(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(2)
    # MEL scores carry no information: the same distribution for melanomas and the rest.
    y = np.r_[np.full(150, MEL), np.full(150, NV)]
    p = np.array([_row(s, 0.0, NV) for s in rng.uniform(0.0, 0.6, 300)])
    with caplog.at_level(logging.INFO, logger="edgederm.thresholds"):
        cal = calibrate(y, p, HAM7, MEL_ONLY)
    assert cal.fallback == {"MEL": "argmax"} and cal.decision["fallback_fired"] == "argmax"
    assert cal.rule == "argmax" and cal.thresholds == {} and cal.decision["priority"] == []
    assert cal.achieved["MEL"]["min_sens"] is None
    np.testing.assert_array_equal(decide(p, HAM7, cal.decision), p.argmax(1))
    assert "strict floors" in caplog.text and "relaxed floors" in caplog.text


def test_akiec_is_calibrated_under_the_rule_not_one_vs_rest() -> None:
    rng = np.random.default_rng(3)
    rows, y = [], []
    # 60 melanomas score high on AKIEC too (0.42–0.47), above every true AKIEC (0.38–0.42).
    for j in rng.uniform(0.0, 0.05, 60):
        rows.append(_row(0.50 + j, 0.42 + j / 2, NV)); y.append(MEL)
    for j in rng.uniform(0.0, 1.0, 40):
        rows.append(_row(0.10 * j, 0.38 + 0.04 * j, NV)); y.append(AKIEC)
    for j in rng.uniform(0.0, 1.0, 100):
        rows.append(_row(0.20 * j, 0.10 * j, NV)); y.append(NV)
    p, y = np.array(rows), np.array(y)

    # One-vs-rest no AKIEC threshold reaches spec 0.65: catching any AKIEC flags all melanomas.
    best = max(
        min(operating_point(y == AKIEC, p[:, AKIEC], t)) for t in np.unique(p[:, AKIEC])
    )
    assert best < 0.65

    cal = calibrate(y, p, HAM7)  # the default config: MEL 0.85/0.85, AKIEC 0.75/0.70
    assert cal.fallback == {"MEL": "strict", "AKIEC": "strict"}
    assert cal.decision["priority"] == ["MEL", "AKIEC"]
    pred = decide(p, HAM7, cal.decision)
    for c, floors in ((MEL, (0.85, 0.85)), (AKIEC, (0.75, 0.70))):
        sens, spec = _sens_spec(y, pred, c)
        assert sens >= floors[0] and spec >= floors[1]
        assert cal.achieved[HAM7[c]]["sens"] == pytest.approx(sens)
        assert cal.achieved[HAM7[c]]["spec"] == pytest.approx(spec)
    # Every melanoma is above both thresholds, and MEL wins.
    t = cal.thresholds
    both = (p[:, MEL] >= t["MEL"]) & (p[:, AKIEC] >= t["AKIEC"])
    assert both[y == MEL].all()
    assert (pred[both] == MEL).all()


def test_later_threshold_may_not_steal_an_earlier_class() -> None:
    rows, y = [], []
    rng = np.random.default_rng(4)
    # 16 clear melanomas and 4 borderline ones whose argmax is MEL (0.30) but below the MEL
    # threshold the search picks, with AKIEC as runner-up (0.29).
    for _ in range(16):
        rows.append(_row(0.90, 0.0, NV)); y.append(MEL)
    for _ in range(4):
        rows.append(_row(0.30, 0.29, NV, {BCC: 0.21})); y.append(MEL)
    # 20 AKIEC: 16 score 0.30–0.45, 4 score 0.20–0.28.
    for s in np.r_[rng.uniform(0.30, 0.45, 16), rng.uniform(0.20, 0.28, 4)]:
        rows.append(_row(0.05, s, NV)); y.append(AKIEC)
    for j in rng.uniform(0.0, 1.0, 130):
        rows.append(_row(0.20 * j, 0.10 * j, NV)); y.append(NV)
    # 30 nevi with MEL scores 0.25–0.45 keep a specific MEL threshold above the borderline ones.
    for s in rng.uniform(0.25, 0.45, 30):
        rows.append(_row(s, 0.0, NV)); y.append(NV)
    p, y = np.array(rows), np.array(y)

    cal = calibrate(y, p, HAM7)
    t = cal.thresholds
    assert t["MEL"] > 0.30  # the borderline melanomas are MEL by argmax, not by threshold
    # An AKIEC threshold ≤ 0.29 would catch every AKIEC but turn 4 melanomas into AKIEC.
    greedy = dict(cal.decision, thresholds={"MEL": t["MEL"], "AKIEC": 0.15})
    assert _sens_spec(y, decide(p, HAM7, greedy), MEL)[0] == pytest.approx(0.80)
    # The search keeps MEL at its floors instead.
    assert t["AKIEC"] > 0.29 and cal.fallback["AKIEC"] == "strict"
    pred = decide(p, HAM7, cal.decision)
    assert _sens_spec(y, pred, MEL)[0] == 1.0
    assert cal.achieved["MEL"]["sens"] == 1.0
    assert cal.achieved["AKIEC"]["sens"] >= 0.75


def test_search_is_feasible_and_near_the_best_by_brute_force() -> None:
    """The grid search against brute force with ``decide`` over every midpoint."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        y = _ham_labels(300, rng)
        p = _model_probs(y, rng, signal=2.2)
        cfg = ThresholdConfig(
            targets=[TargetSpec("MEL", 0.80, 0.80), TargetSpec("AKIEC", 0.70, 0.70)],
            fallbacks=[FallbackLevel("relaxed", 0.70, 0.70, {"AKIEC": (0.6, 0.6)})],
        )
        cal = calibrate(y, p, HAM7, cfg)
        fixed: dict[str, float] = {}
        keep: dict[int, tuple[float, float]] = {}
        for name, c in (("MEL", MEL), ("AKIEC", AKIEC)):
            level = cal.fallback[name]
            if level == "argmax":
                assert name not in cal.thresholds
                continue
            floors = (cal.achieved[name]["min_sens"], cal.achieved[name]["min_spec"])
            u = np.unique(p[:, c])
            best = None
            for t in (u[:-1] + u[1:]) / 2:
                d = {"rule": "priority_thresholds", "thresholds": {**fixed, name: t}, "priority": [*fixed, name]}
                pred = decide(p, HAM7, d)
                sens, spec = _sens_spec(y, pred, c)
                ok = sens >= floors[0] - 1e-9 and spec >= floors[1] - 1e-9
                ok &= all(
                    _sens_spec(y, pred, j)[0] >= fs - 1e-9 and _sens_spec(y, pred, j)[1] >= fp - 1e-9
                    for j, (fs, fp) in keep.items()
                )
                if ok:
                    margin = min(sens - floors[0], spec - floors[1])
                    best = margin if best is None else max(best, margin)
            assert best is not None
            chosen = {**fixed, name: cal.thresholds[name]}
            pred = decide(p, HAM7, {"rule": "priority_thresholds", "thresholds": chosen, "priority": list(chosen)})
            sens, spec = _sens_spec(y, pred, c)
            # Feasible under decide() itself, and within a couple of images of the best
            # achievable margin (the stable choice trades the last image for continuity).
            margin = min(sens - floors[0], spec - floors[1])
            assert margin >= 0 and margin >= best - 2.5 / min((y == c).sum(), (y != c).sum())
            fixed[name] = cal.thresholds[name]
            keep[c] = floors


@pytest.mark.parametrize("seed", range(10))
def test_thresholds_are_stable_under_small_probability_changes(seed: int) -> None:
    """Probabilities moved by at most 0.01 move no threshold by more than 0.02 (30 melanomas:
    one image is 3 pp of sensitivity, where an exact argmax over counts jumps: on these ten
    data sets the former exact search moved a threshold by up to 0.44)."""
    rng = np.random.default_rng(100 + seed)
    y = _ham_labels(200, rng)
    y[:30] = MEL
    p = _model_probs(y, rng, signal=3.0)
    cfg = ThresholdConfig(targets=[TargetSpec("MEL", 0.80, 0.75), TargetSpec("AKIEC", 0.60, 0.60)], fallbacks=[])
    base = calibrate(y, p, HAM7, cfg)
    assert base.thresholds, "the constructed data must admit thresholds"
    for trial in range(5):
        q = rng.dirichlet(np.ones(len(HAM7)), len(y))
        eps = 0.01 * rng.uniform(0.2, 1.0)
        moved = (1 - eps) * p + eps * q  # rows still sum to 1; |moved - p| ≤ 0.01
        assert np.abs(moved - p).max() <= 0.01
        cal = calibrate(y, moved, HAM7, cfg)
        if cal.fallback != base.fallback:  # a level switch is the one legitimate jump
            continue
        for cls, t in base.thresholds.items():
            assert abs(cal.thresholds[cls] - t) <= 0.02, (trial, cls, t, cal.thresholds[cls])


def test_criteria_trade_sensitivity_for_specificity() -> None:
    rng = np.random.default_rng(5)
    y = _ham_labels(600, rng)
    p = _model_probs(y, rng, signal=2.5)
    got = {}
    for crit in ("margin", "max_spec", "max_sens", "bacc"):
        cfg = ThresholdConfig(targets=[TargetSpec("MEL", 0.75, 0.75)], fallbacks=[], criterion=crit)
        cal = calibrate(y, p, HAM7, cfg)
        assert cal.fallback["MEL"] == "strict"
        got[crit] = {**cal.achieved["MEL"], "bacc": cal.decision["calibrated_on"]["bacc"]}
    assert got["max_spec"]["spec"] >= got["margin"]["spec"] >= got["max_sens"]["spec"]
    assert got["max_sens"]["sens"] >= got["margin"]["sens"] >= got["max_spec"]["sens"]
    assert got["bacc"]["bacc"] == max(g["bacc"] for g in got.values())
    assert got["max_spec"]["spec"] > got["max_sens"]["spec"]  # the criteria do differ here


def test_class_without_validation_positives_falls_to_argmax(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(6)
    y = rng.choice([MEL, NV, BKL], 200)
    p = _model_probs(y, rng, signal=3.0)
    with caplog.at_level(logging.WARNING, logger="edgederm.thresholds"):
        cal = calibrate(y, p, HAM7)
    assert cal.fallback["AKIEC"] == "argmax" and "AKIEC" not in cal.thresholds
    assert cal.achieved["AKIEC"]["sens"] is None
    assert "AKIEC not calibrated" in caplog.text


# --------------------------------------------------------------------------------------------
# other taxonomies, the card, the configuration


def test_targets_missing_from_the_taxonomy_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(7)
    classes = ["benign", "malignant"]
    y = rng.integers(0, 2, 300)
    s = np.clip(np.where(y == 1, rng.normal(0.7, 0.12, 300), rng.normal(0.3, 0.12, 300)), 0, 1)
    p = np.stack([1 - s, s], axis=1)
    with caplog.at_level(logging.INFO, logger="edgederm.thresholds"):
        cal = calibrate(y, p, classes)  # default targets MEL, AKIEC: neither is a class here
    assert cal.rule == "argmax" and cal.decision["skipped"] == ["MEL", "AKIEC"]
    assert "MEL skipped" in caplog.text and "AKIEC skipped" in caplog.text

    cal = calibrate(y, p, classes, {"targets": [{"class": "Malignant", "min_sens": 0.9, "min_spec": 0.8}]})
    assert cal.rule == "priority_thresholds" and list(cal.thresholds) == ["malignant"]
    sens, spec = _sens_spec(y, decide(p, classes, cal.decision), 1)
    assert cal.fallback["malignant"] == "strict" and sens >= 0.9 and spec >= 0.8


def test_decision_is_a_valid_card_decision() -> None:
    schema = json.loads(resources.files("edgederm").joinpath("card.schema.json").read_text())
    rng = np.random.default_rng(8)
    y = _ham_labels(400, rng)
    cal = calibrate(y, _model_probs(y, rng), HAM7)
    d = json.loads(json.dumps(cal.decision))  # strict JSON, no numpy scalars
    jsonschema.validate(d, schema["properties"]["decision"])
    assert set(d) >= {"rule", "thresholds", "priority", "fallback", "fallback_fired", "calibrated_on"}
    assert set(d["calibrated_on"]["achieved"]) == {"MEL", "AKIEC"}
    assert isinstance(cal, Calibration) and cal.summary().count("\n") == 1


def test_config_round_trip_and_yaml() -> None:
    text = """
    targets:
      - {class: MEL, min_sens: 0.9, min_spec: 0.8}
      - {class: AKIEC, min_sens: 0.75, min_spec: 0.7}
    fallbacks:
      - {name: relaxed, min_sens: 0.85, min_spec: 0.75, per_class: {AKIEC: {min_sens: 0.7, min_spec: 0.6}}}
      - {name: loose, min_spec: 0.5}
      - argmax
    priority: [AKIEC, MEL]
    criterion: max_spec
    """
    cfg = ThresholdConfig.from_dict(yaml.safe_load(text))
    assert [t.cls for t in cfg.ordered_targets()] == ["AKIEC", "MEL"]
    assert cfg.criterion == "max_spec"
    assert ThresholdConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ThresholdConfig.from_dict(ThresholdConfig().to_dict()) == ThresholdConfig()
    assert ThresholdConfig.from_dict(None) == ThresholdConfig()
    mel, akiec = cfg.targets
    assert cfg.chain(mel) == [("strict", (0.9, 0.8)), ("relaxed", (0.85, 0.75)), ("loose", (0.85, 0.5))]
    assert cfg.chain(akiec) == [("strict", (0.75, 0.7)), ("relaxed", (0.7, 0.6)), ("loose", (0.7, 0.5))]
    # A fallback never tightens: its floors are capped at the previous level's.
    default = ThresholdConfig()
    assert default.chain(default.targets[1])[1] == ("relaxed", (0.70, 0.65))
    assert FallbackLevel("x", 0.9, 0.4).floors("MEL", (0.8, 0.8)) == (0.8, 0.4)
    # Mapping shorthand for targets.
    short = ThresholdConfig.from_dict({"targets": {"MEL": {"min_sens": 0.9, "min_spec": 0.8}}})
    assert short.targets == [TargetSpec("MEL", 0.9, 0.8)]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"targets": [{"class": "MEL", "min_sens": 1.2, "min_spec": 0.8}]}, "min_sens must be in"),
        ({"targets": [{"class": "MEL", "min_sens": 0.8}]}, "needs 'class'"),
        ({"targets": [{"class": "MEL", "min_sens": 0.8, "min_spec": 0.8, "sens": 1}]}, "unknown key"),
        ({"fallbacks": [{"name": "strict", "min_sens": 0.5}]}, "reserved"),
        ({"fallbacks": ["argmax", {"name": "r"}]}, "last fallback"),
        ({"priority": ["MEL"]}, "must list each target"),
        ({"criterion": "youden"}, "unknown threshold criterion"),
        ({"threshold": 0.5}, "unknown key"),
        ({"targets": [{"class": "MEL", "min_sens": 0.8, "min_spec": 0.8}] * 2}, "twice"),
    ],
)
def test_bad_configs_are_one_line_errors(bad: dict, match: str) -> None:
    with pytest.raises(EdgedermError, match=match) as e:
        ThresholdConfig.from_dict(bad)
    assert "\n" not in str(e.value)


def test_calibration_only_takes_validation_arrays() -> None:
    # No way to pass a test split (or anything else) to the threshold search.
    params = list(inspect.signature(calibrate).parameters)
    assert params == ["y_val", "probs_val", "classes", "config", "calibrated_on"]
    rng = np.random.default_rng(9)
    y = _ham_labels(300, rng)
    p = _model_probs(y, rng)
    a = calibrate(y, p, HAM7, calibrated_on={"probs": "out-of-fold stacked"})
    assert a.decision["calibrated_on"]["probs"] == "out-of-fold stacked"
    assert a.decision["calibrated_on"]["split"] == "val"
    # Same validation data, same thresholds: nothing else enters.
    assert calibrate(y.copy(), p.copy(), HAM7).thresholds == a.thresholds


# --------------------------------------------------------------------------------------------
# the held-out clinical report


def _val_test(seed: int = 10):
    rng = np.random.default_rng(seed)
    yv = _ham_labels(800, rng)
    yt = _ham_labels(400, rng)
    return yv, _model_probs(yv, rng, 2.5), yt, _model_probs(yt, rng, 2.5)


def test_clinical_report_on_held_out_data() -> None:
    yv, pv, yt, pt = _val_test()
    cal = calibrate(yv, pv, HAM7)
    before = copy.deepcopy(cal.decision)
    rep = clinical_report(yt, pt, HAM7, cal.decision, n_boot=300, seed=1)
    assert cal.decision == before  # the report never re-tunes
    pred = decide(pt, HAM7, cal.decision)
    for name, c in (("MEL", MEL), ("AKIEC", AKIEC)):
        t = rep["targets"][name]
        sens, spec = _sens_spec(yt, pred, c)
        assert t["sens"]["value"] == pytest.approx(sens) and t["spec"]["value"] == pytest.approx(spec)
        for e in (t["sens"], t["spec"]):
            assert e["lo"] <= e["value"] <= e["hi"]
        assert t["met"] == (sens >= t["min_sens"] and spec >= t["min_spec"])
        assert t["met_at_lower_bound"] == (t["sens"]["lo"] >= t["min_sens"] and t["spec"]["lo"] >= t["min_spec"])
        if t["met_at_lower_bound"]:
            assert t["met"]
        a_sens, a_spec = _sens_spec(yt, pt.argmax(1), c)
        assert t["sens_argmax"] == pytest.approx(a_sens) and t["spec_argmax"] == pytest.approx(a_spec)
        assert t["threshold"] == cal.thresholds.get(name) and t["fallback"] == cal.fallback[name]
    b = rep["bacc"]
    assert b["diff"]["diff"] == pytest.approx(b["rule"]["value"] - b["argmax"]["value"])
    for e in (b["rule"], b["argmax"]):
        assert e["lo"] <= e["value"] <= e["hi"]
    assert rep["all_met"] == all(t["met"] for t in rep["targets"].values())
    json.dumps(rep)
    table = format_clinical_table(rep)
    assert "| MEL |" in table and "| AKIEC |" in table and "BACC under the rule" in table
    assert f"n = {len(yt)} images" in table
    sens, d = rep["targets"]["MEL"]["sens"], rep["bacc"]["diff"]
    assert f"{sens['value']:.3f} [{sens['lo']:.3f}–{sens['hi']:.3f}]" in table
    assert f"| {d['diff']:+.3f} [{d['lo']:+.3f} to {d['hi']:+.3f}] |" in table


def test_thresholds_from_val_can_fail_on_a_shifted_test_split() -> None:
    yv, pv, _, _ = _val_test(11)
    cal = calibrate(yv, pv, HAM7, MEL_ONLY)
    assert cal.achieved["MEL"]["sens"] >= 0.80
    # A test split where the model is much worse on melanoma: the report says so.
    rng = np.random.default_rng(12)
    yt = _ham_labels(400, rng)
    pt = _model_probs(yt, rng, 2.5)
    mel = yt == MEL
    pt[mel] = _model_probs(rng.choice([NV, BKL], mel.sum()), rng, 2.5)
    rep = clinical_report(yt, pt, HAM7, cal.decision, n_boot=100)
    assert rep["targets"]["MEL"]["met"] is False and rep["all_met"] is False
    assert "**no**" in format_clinical_table(rep)


def test_bootstrap_resamples_lesions_not_images() -> None:
    yv, pv, yt, pt = _val_test(13)
    cal = calibrate(yv, pv, HAM7)
    base = clinical_report(yt, pt, HAM7, cal.decision, n_boot=300, seed=3)
    # Every lesion photographed 3 times (identical images): with lesion ids the evidence is
    # unchanged, so are the CIs; counting the copies as independent images narrows them.
    y3, p3 = np.repeat(yt, 3), np.repeat(pt, 3, axis=0)
    lesions = np.repeat(np.arange(len(yt)), 3)
    grouped = clinical_report(y3, p3, HAM7, cal.decision, groups=lesions, n_boot=300, seed=3)
    naive = clinical_report(y3, p3, HAM7, cal.decision, n_boot=300, seed=3)
    assert grouped["n_groups"] == len(yt) and naive["n_groups"] == 3 * len(yt)
    for name in ("MEL", "AKIEC"):
        for m in ("sens", "spec"):
            b, g, n = (r["targets"][name][m] for r in (base, grouped, naive))
            assert g["value"] == pytest.approx(b["value"])
            assert g["lo"] == pytest.approx(b["lo"]) and g["hi"] == pytest.approx(b["hi"])
            assert n["hi"] - n["lo"] < 0.8 * (b["hi"] - b["lo"])
    assert grouped["bacc"]["rule"]["lo"] == pytest.approx(base["bacc"]["rule"]["lo"])


def test_report_with_an_absent_target_class() -> None:
    rng = np.random.default_rng(14)
    yv = _ham_labels(500, rng)
    cal = calibrate(yv, _model_probs(yv, rng), HAM7)
    yt = rng.choice([MEL, NV, BKL], 200)  # no AKIEC in this split
    rep = clinical_report(yt, _model_probs(yt, rng), HAM7, cal.decision, n_boot=50)
    t = rep["targets"]["AKIEC"]
    assert t["n_pos"] == 0 and t["sens"]["value"] is None and t["met"] is None
    assert rep["all_met"] is None
    assert "n/a" in format_clinical_table(rep)
    # Targets come from the config when given, overriding the decision's.
    rep = clinical_report(yt, _model_probs(yt, rng), HAM7, cal.decision, n_boot=50, config=MEL_ONLY)
    assert list(rep["targets"]) == ["MEL"]


@pytest.mark.parametrize("seed", range(6))
def test_a_class_left_to_argmax_keeps_its_sensitivity(seed: int) -> None:
    """MEL misses every level and falls to argmax; the AKIEC threshold chosen after it may not
    pull melanomas out of their argmax calls (priority MEL over AKIEC still holds)."""
    from edgederm.decision import decide

    rng = np.random.default_rng(seed)
    classes = ["MEL", "NV", "AKIEC"]
    y = rng.choice(3, size=400, p=[0.3, 0.55, 0.15])
    logits = rng.normal(size=(400, 3))
    logits[np.arange(400), y] += 0.9  # weak signal: MEL cannot reach 0.85 / 0.85
    logits[y == 0, 2] += 0.8  # melanomas also look like AKIEC
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cal = calibrate(y, probs, classes, {"targets": [{"class": "MEL", "min_sens": 0.85, "min_spec": 0.85},
                                                      {"class": "AKIEC", "min_sens": 0.6, "min_spec": 0.5}],
                                          "fallbacks": []})
    assert cal.decision["fallback"]["MEL"] == "argmax"
    argmax_sens = float(((probs.argmax(1) == 0) & (y == 0)).sum() / (y == 0).sum())
    pred = decide(probs, classes, cal.decision)
    assert float(((pred == 0) & (y == 0)).sum() / (y == 0).sum()) >= argmax_sens - 1e-12
