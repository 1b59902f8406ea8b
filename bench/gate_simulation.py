"""How often does the accuracy gate fail a faithful artifact, and pass a harmful one?

Monte-Carlo on validation sets of the sizes the gate really sees (the synthetic default and the
real CPU quickstart), with the gate's own ``compare`` and ``fidelity_check`` — nothing
re-implemented. Per trial: draw a reference (labels with the split's class counts, probabilities
from a logit model whose BACC is like the real student's, a shipped MEL threshold), then an
artifact of one kind, and record the verdict.

Faithful kinds (every failure is a *false fail*):
  copy-0.005   probabilities moved by at most 0.005 (what FP32 → FP16 copies do)
  fp16-like    logit noise giving ~99.5 % decision agreement (the TensorRT FP16 precheck: 99.5 %)
  noisy-fp16   twice that noise, ~99 % agreement (a pessimistic faithful artifact)
Harmful kinds (every pass is a *false pass*), defined on the population, not on the sample:
  mel-5pp / mel-10pp   each melanoma the reference calls correctly is lost (called NV) with
                       probability 0.05 / 0.10 / 0.20: population MEL sensitivity −5 / −10 / −20 pp × sens
  diffuse-3pp          every correct call of every class is lost with probability 0.03
  int8-like            logit noise giving ~92 % agreement (what the rejected INT8 artifacts did)

For each, the rate under the gate's rule and under the former rule (point estimates against
fixed percentage points: BACC −1 pp, MEL sensitivity −2 pp, any class −5 pp), and with the
label-free pool rules on a pool of unlabelled images (the quickstart's: ISIC 2020 + 2019 test +
PH2, 3,494 images) drawn from the same model.

    python bench/gate_simulation.py [--trials 300] [--seed 0]

Prints one table per validation set; docs/gate.md records a run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgederm.decision import decide
from edgederm.export.gate import PoolPredictions, Predictions, Tolerances, compare, fidelity_check

CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
# Validation class counts the gate sees (split.csv of each run).
SETS = {
    "synthetic default (n=205, its class proportions)": [31, 72, 25, 20, 27, 14, 16],
    "real quickstart (val, n=368)": [87, 166, 61, 12, 37, 2, 3],
}
POOL_N = 3494
DECISION = {"rule": "priority_thresholds", "thresholds": {"MEL": 0.35}, "priority": ["MEL"]}


def reference_probs(y: np.ndarray, rng: np.random.Generator, signal: float = 1.8) -> np.ndarray:
    logits = rng.normal(size=(len(y), len(CLASSES)))
    logits[np.arange(len(y)), y] += signal
    return logits


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def artifact_logits(kind: str, logits: np.ndarray, y: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """The artifact's logits on the same images (``y`` None for an unlabelled pool)."""
    z = logits.copy()
    if kind == "copy-0.005":
        return z + rng.uniform(-0.01, 0.01, z.shape)  # |Δp| ≤ |Δz|/2 ≤ 0.005
    if kind == "fp16-like":
        return z + rng.normal(0, 0.01, z.shape)
    if kind == "noisy-fp16":
        return z + rng.normal(0, 0.02, z.shape)
    if kind == "int8-like":
        return z + rng.normal(0, 0.15, z.shape)
    ref_pred = decide(softmax(logits), CLASSES, DECISION)
    # Harmful kinds act on the reference's correct calls; on a pool, on its calls (the same
    # mechanism: the artifact would lose them whatever the label).
    correct = ref_pred == y if y is not None else np.ones(len(z), bool)
    if kind.startswith("mel-"):
        q = {"mel-5pp": 0.05, "mel-10pp": 0.10, "mel-20pp": 0.20}[kind]
        hit = correct & (ref_pred == 0) & (rng.random(len(z)) < q)
        z[hit, 0] -= 20.0  # the melanoma call goes to the runner-up (mostly NV)
        return z
    if kind == "diffuse-3pp":
        hit = correct & (rng.random(len(z)) < 0.03)
        z[hit, ref_pred[hit]] -= 20.0
        return z
    raise ValueError(kind)


def old_rule(ref: Predictions, art: Predictions) -> bool:
    """The former gate (same shipped rule, no re-fit): point-estimate pp drops."""
    rp, ap = decide(ref.probs, CLASSES, DECISION), decide(art.probs, CLASSES, DECISION)
    rec = lambda p, k: float((p[ref.y == k] == k).mean())  # noqa: E731
    bacc = lambda p: np.mean([rec(p, k) for k in range(len(CLASSES))])  # noqa: E731
    if 100 * (bacc(rp) - bacc(ap)) > 1.0 + 1e-9:
        return False
    return all(100 * (rec(rp, k) - rec(ap, k)) <= (2.0 if k == 0 else 5.0) + 1e-9 for k in range(len(CLASSES)))


def run(counts: list[int], kinds: list[str], trials: int, seed: int) -> list[tuple[str, float, float, float, float]]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), counts)
    tol = Tolerances(min_class_support=2)
    rows = []
    for kind in kinds:
        new = old = pool = agree = 0
        for _ in range(trials):
            z = reference_probs(y, rng)
            ref = Predictions("ref", CLASSES, [str(i) for i in range(len(y))], y, [str(i) for i in range(len(y))],
                              softmax(z), DECISION, ["identity"])
            art = Predictions("art", CLASSES, ref.image_ids, y, ref.groups, softmax(artifact_logits(kind, z, y, rng)),
                              DECISION, ["identity"])
            res = compare(art, ref, tolerances=tol, n_boot=300, seed=int(rng.integers(1 << 31)))
            new += res.passed
            old += old_rule(ref, art)
            agree += res.comparison["agreement"]
            # The pool: unlabelled images of the same kind of model output.
            yp = rng.choice(len(CLASSES), POOL_N, p=np.array(counts) / sum(counts))
            zp = reference_probs(yp, rng)
            rpool = PoolPredictions("ref", CLASSES, [str(i) for i in range(POOL_N)], softmax(zp), DECISION)
            apool = PoolPredictions("art", CLASSES, rpool.image_ids, softmax(artifact_logits(kind, zp, None, rng)), DECISION)
            fid = fidelity_check(apool, rpool, CLASSES, tol)
            pool += res.passed and fid["passed"]
        rows.append((kind, new / trials, old / trials, pool / trials, agree / trials))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    faithful = ["copy-0.005", "fp16-like", "noisy-fp16"]
    harmful = ["mel-5pp", "mel-10pp", "mel-20pp", "diffuse-3pp", "int8-like"]
    for name, counts in SETS.items():
        t0 = time.perf_counter()
        rows = run(counts, faithful + harmful, args.trials, args.seed)
        print(f"\n### {name}: {args.trials} trials per row ({time.perf_counter() - t0:.0f} s)\n")
        print("| artifact | kind | mean agreement | gate passes | former rule passes | gate + fidelity pool passes |")
        print("|---|---|---:|---:|---:|---:|")
        for kind, new, old, pool, agree in rows:
            what = "faithful (pass = right)" if kind in faithful else "harmful (pass = false pass)"
            print(f"| {kind} | {what} | {agree:.3f} | {new:.3f} | {old:.3f} | {pool:.3f} |")


if __name__ == "__main__":
    main()
