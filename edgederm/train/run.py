"""A training run: recipe → split → members → ensemble → thresholds → checkpoint + card → metrics.

Run folder layout (``<out>/<name>/``)::

    recipe.yaml        the resolved recipe
    split.csv          the lesion-grouped split (or k-fold file), reused by re-runs and later stages
    members/<slot>-<model>[/fold<k>]/last.pt  per-epoch training state (--resume), atomic
    members/.../best.pt                       weights of the best validation-BACC epoch
    model.pt           the ensemble checkpoint with its card (+ model.pt.card.json)
    metrics.json       val and test metrics with lesion-level bootstrap CIs (+ clinical thresholds)
    predictions/{val,test}.npz, history.json, plots/, report.md

Honesty rules enforced here: splits are grouped by lesion and checked for leakage; the ensemble
weights, the stacker and the clinical thresholds are fitted on validation data only (the stacker
on out-of-fold predictions when it also feeds the thresholds); the test split is scored once,
through the same runtime every exported artifact is scored with.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from ..card import ArtifactCard, provenance, sidecar_path
from ..checkpoint import Member, member_from_model, save_checkpoint
from ..data.images import load_image
from ..data.leakage import check_leakage
from ..data.readers import read_dataset
from ..data.records import DatasetIndex, Skipped
from ..data.splits import (
    TEST_FOLD,
    apply_split,
    kfold_to_split,
    make_kfold,
    make_splits,
    read_split_csv,
    read_split_meta,
    write_split_csv,
)
from ..errors import DataError, EdgedermError, ImageError
from ..evaluate import EvalResult, predict_index, score
from ..fsutil import jsonable, sha256_file, write_json_atomic, write_text_atomic
from ..metrics import format_ci_entry
from ..preprocess import PreprocessSpec
from ..provenance import command
from .config import TrainConfig
from .loop import EpochCallback, init_distributed, resolve_device, train_member, world

log = logging.getLogger(__name__)


# -- data -----------------------------------------------------------------------------------------
def drop_unreadable(index: DatasetIndex) -> DatasetIndex:
    """Decode every image once; unreadable ones are dropped into ``skipped`` (and counted)."""
    keep: list[int] = []
    for i, r in enumerate(index.records):
        try:
            load_image(r.ref, decode_size=256)  # readable? (JPEGs need not be decoded in full)
        except ImageError as e:
            index.skipped.append(Skipped(r.image_id, str(e)))
            log.warning("skipped: %s", e)
            continue
        keep.append(i)
    if len(keep) == len(index.records):
        return index
    out = index.subset(keep)
    out.skipped = index.skipped
    return out


def read_data(cfg: TrainConfig) -> DatasetIndex:
    if cfg.synthetic is not None and not Path(cfg.data).joinpath("HAM10000_metadata.csv").exists():
        from ..data.synthetic import generate

        log.info("generating the synthetic data set into %s", cfg.data)
        generate(cfg.data, **cfg.synthetic)
    index = read_dataset(cfg.data, cfg.format, taxonomy=cfg.taxonomy)
    if cfg.max_images:
        from ..data.splits import subsample

        index = subsample(index, cfg.max_images, seed=cfg.seed)
        log.info("max_images=%d: using %s", cfg.max_images, index.name)
    return drop_unreadable(index)


def prepare_data(cfg: TrainConfig) -> tuple[DatasetIndex, dict[str, Any], Path]:
    """Read the data, make or reuse the lesion-grouped split (or folds), verify nothing leaks.

    Returns the index, the assignment (image id → split name, or → fold for k-fold) and its file.
    """
    index = read_data(cfg)
    split_path = Path(cfg.split_file) if cfg.split_file else cfg.run_dir / "split.csv"
    kfold = cfg.cv_folds > 1
    if split_path.exists():
        if (read_split_meta(split_path).get("kind") == "kfold") != kfold:
            raise DataError(f"{split_path} is {'not ' if kfold else ''}a k-fold split, but the recipe has cv_folds={cfg.cv_folds}")
        assignment: dict[str, Any] = read_split_csv(split_path, index)
        log.info("reusing split %s", split_path)
    else:
        if dist.is_initialized() and dist.get_rank() != 0:
            raise EdgedermError("internal: non-zero rank must receive the split from rank 0")
        if kfold:
            assignment = make_kfold(index, k=cfg.cv_folds, seed=cfg.seed, test=cfg.test)
        else:
            assignment = make_splits(index, val=cfg.val, test=cfg.test, seed=cfg.seed)
        write_split_csv(split_path, index, assignment, seed=cfg.seed)
    parts = [kfold_to_split(assignment, f) for f in range(cfg.cv_folds)] if kfold else [assignment]
    for part in parts:
        report = check_leakage(index, part, near_duplicates=False)
        if not report.ok:
            raise DataError(f"split {split_path} leaks: {report.format().splitlines()[0]}")
        splits = apply_split(index, part)
        for name in ("train", "val", "test"):
            if len(splits[name]) == 0:
                raise DataError(f"split {name!r} is empty; the data set is too small for this recipe's val/test/cv_folds")
    return index, assignment, split_path


# -- the whole run --------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, resume: bool = False, on_epoch_end: EpochCallback | None = None) -> Path:
    """Train a recipe; with ``seeds`` set, one run per seed plus a mean ± sd summary."""
    if cfg.seeds:
        return train_seeds(cfg, resume=resume, on_epoch_end=on_epoch_end)
    if cfg.variants:
        return train_variants(cfg, resume=resume, on_epoch_end=on_epoch_end)
    return _train_one(cfg, resume=resume, on_epoch_end=on_epoch_end)


def _train_one(cfg: TrainConfig, *, resume: bool, on_epoch_end: EpochCallback | None) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed = init_distributed(resolve_device(cfg.device))
    rank, world_size = world()
    run_dir = cfg.run_dir
    if run_dir.joinpath("model.pt").exists() and not resume:
        raise EdgedermError(f"{run_dir} already holds a finished run; choose another name or --resume")
    t_start = time.perf_counter()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        index, assignment, split_path = prepare_data(cfg)
    if distributed:
        dist.barrier()  # rank 0 wrote the split; the others read it
        if rank != 0:
            cfg = dataclasses.replace(cfg, split_file=str(cfg.split_file or run_dir / "split.csv"))
            index, assignment, split_path = prepare_data(cfg)

    kfold = cfg.cv_folds > 1
    folds = list(range(cfg.cv_folds)) if kfold else [None]
    fold_splits = {f: apply_split(index, kfold_to_split(assignment, f) if kfold else assignment) for f in folds}
    log.info("data %s: %s", index.name, {k: len(v) for k, v in fold_splits[folds[0]].items()})

    members: list[Member] = []
    infos: list[dict[str, Any]] = []
    specs: list[PreprocessSpec] = []  # typed, as each member trained (infos hold their JSON form)
    history: dict[str, Any] = {}
    for slot, mcfg in enumerate(cfg.members):
        for f in folds:
            key = f"{slot}-{mcfg.model}" + (f"/fold{f}" if kfold else "")
            mdir = run_dir / "members" / key
            model, spec, state = train_member(
                cfg, mcfg, slot, fold_splits[f], mdir=mdir, resume=resume, on_epoch_end=on_epoch_end
            )
            members.append(member_from_model(mcfg.model, model, len(index.classes), **mcfg.kwargs))
            info = {
                "name": mcfg.model,
                "slot": slot,
                "val_bacc": state["best_bacc"],
                "best_epoch": state["best_epoch"],
                "preprocessing": spec.to_dict(),
                "init": "pretrained" if mcfg.pretrained else "weights" if mcfg.weights else "scratch",
                "loss": mcfg.loss if mcfg.loss == "ce" else f"focal(gamma={mcfg.gamma})",
            }
            if kfold:
                info["fold"] = f
            if state.get("tiers"):
                info["augment_tiers"] = state["tiers"]
            infos.append(info)
            specs.append(spec)
            history[key] = state["history"]
    if distributed:
        dist.barrier()
        if rank != 0:
            return run_dir  # rank 0 alone scores and writes the ensemble
    return _finish(cfg, index, assignment, split_path, members, infos, specs, history, t_start, world_size)


def _finish(
    cfg: TrainConfig,
    index: DatasetIndex,
    assignment: dict[str, Any],
    split_path: Path,
    members: list[Member],
    infos: list[dict[str, Any]],
    specs: list[PreprocessSpec],
    history: dict[str, Any],
    t_start: float,
    world_size: int,
) -> Path:
    from ..runtime import load

    run_dir = cfg.run_dir
    kfold = cfg.cv_folds > 1
    # The seeds' rule: members weighted by validation BACC.
    total = sum(max(i["val_bacc"], 1e-6) for i in infos)
    for info in infos:
        info["weight"] = max(info["val_bacc"], 1e-6) / total
    if kfold:
        test_ids = {i for i, f in assignment.items() if f == TEST_FOLD}
        counts = {"cv": len(index) - len(test_ids), "test": len(test_ids), "folds": cfg.cv_folds}
        val_index = index.subset([i for i, r in enumerate(index.records) if r.image_id not in test_ids], name=f"{index.name}:cv")
        test_index = index.subset([i for i, r in enumerate(index.records) if r.image_id in test_ids], name=f"{index.name}:test")
    else:
        splits = apply_split(index, assignment)
        counts = {k: len(v) for k, v in splits.items()}
        val_index, test_index = splits["val"], splits["test"]
    model_entry: dict[str, Any] = {}
    if cfg.segment:
        from ..seg.apply import segmenter_card_entry

        model_entry["segmenter"] = segmenter_card_entry(cfg.segment)
    card = ArtifactCard(
        name=cfg.name,
        classes=list(index.classes),
        taxonomy=cfg.taxonomy or index.taxonomy,
        preprocessing=specs[0],
        model={
            "kind": "ensemble" if len(infos) > 1 else "single",
            "combine": "weighted_mean",
            "output": "logits",
            "members": infos,
            "training": {"world_size": world_size, "sampler": cfg.sampler, "augment": cfg.augment,
                         "class_weights": cfg.class_weights, "cv_folds": cfg.cv_folds, "seed": cfg.seed},
            **model_entry,
        },
        tta={"views": list(cfg.tta)},
        data={
            "dataset": index.name,
            "root": str(Path(cfg.data).resolve()),
            "fingerprint": index.fingerprint(),
            "split_file": str(split_path.resolve()),
            "split_sha256": sha256_file(split_path),
            "counts": counts,
            "skipped": len(index.skipped),
        },
        # The recipe's content hash lets `edgederm run` tell an up-to-date run from a stale one.
        provenance=provenance(command=command(), recipe_sha256=cfg.content_sha256()),
    )
    # Score through the runtime, exactly as every exported artifact will be scored. The
    # checkpoint is written under a temporary name: model.pt appears only once the run is done.
    unscored = run_dir / ".model.unscored.pt"
    try:
        save_checkpoint(unscored, members, card)
        kept, skipped, per_member = predict_index(load(unscored), val_index, per_member=True)
        assert isinstance(per_member, list)
        y_val = np.array([index.classes.index(r.label) for r in kept])
        groups_val = [r.group for r in kept]
        val_probs, val_note = _validation_probs(cfg, card, infos, kept, per_member, y_val, groups_val, assignment)

        if cfg.thresholds is not None:
            from ..thresholds import ThresholdConfig, calibrate

            calibration = calibrate(y_val, val_probs, index.classes, ThresholdConfig.from_dict(cfg.thresholds))
            card.decision = calibration.decision
        val_result = score(val_index, kept, val_probs, card.decision, n_boot=cfg.n_boot, seed=cfg.seed,
                           skipped=skipped, views=cfg.tta)
        save_checkpoint(unscored, members, card)
        kept_t, skipped_t, test_probs = predict_index(load(unscored), test_index)
        assert isinstance(test_probs, np.ndarray)
        test_result = score(test_index, kept_t, test_probs, card.decision, n_boot=cfg.n_boot, seed=cfg.seed,
                            skipped=skipped_t, views=cfg.tta)

        metrics = _run_metrics(card, val_result, test_result, thresholds=cfg.thresholds is not None, n_boot=cfg.n_boot, seed=cfg.seed)
        metrics["val"]["note"] = val_note
        metrics["train_seconds"] = time.perf_counter() - t_start
        metrics["world_size"] = world_size
        ckpt = run_dir / "model.pt"
        save_checkpoint(ckpt, members, card)
        unscored.unlink()
        sidecar_path(unscored).unlink()
    except BaseException:  # interrupted or failed while scoring: no stray checkpoint is left
        for f in (unscored, sidecar_path(unscored)):
            f.unlink(missing_ok=True)
        raise
    _write_predictions(run_dir, {"val": val_result, "test": test_result})
    write_json_atomic(run_dir / "history.json", history)
    write_json_atomic(run_dir / "metrics.json", jsonable(metrics))
    _extras(cfg, run_dir)
    log.info("run finished in %.0fs: %s", metrics["train_seconds"], run_dir)
    return run_dir


def _run_metrics(card: ArtifactCard, val_result: EvalResult, test_result: EvalResult, *, thresholds: bool,
                 n_boot: int, seed: int) -> dict[str, Any]:
    """metrics.json's val/test sections (+ clinical operating points); fills ``card.metrics``."""
    metrics: dict[str, Any] = {"val": val_result.summary(), "test": test_result.summary()}
    if card.decision.get("rule") != "argmax" or thresholds:
        from ..thresholds import clinical_report

        metrics["clinical"] = {
            s: clinical_report(r.y_true, r.probs, card.classes, card.decision, groups=r.groups, n_boot=n_boot, seed=seed)
            for s, r in (("val", val_result), ("test", test_result))
        }
    card.metrics = {s: {"n": metrics[s]["n"], **metrics[s]["ci"]} for s in ("val", "test")}
    if "clinical" in metrics:
        card.metrics["clinical_test"] = jsonable(metrics["clinical"]["test"])
    return metrics


def recalibrate(run_dir: str | Path, thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-fit a finished run's clinical thresholds without retraining.

    Uses the validation probabilities the run calibrated on (``predictions/val.npz``: the same
    out-of-fold / cross-fitted probabilities) with ``thresholds`` (default: the run's recipe),
    then re-scores the stored test probabilities under the new rule. The weights are untouched;
    model.pt, its card, metrics.json and report.md are rewritten atomically.
    """
    import json
    from types import SimpleNamespace

    from ..checkpoint import load_checkpoint
    from ..thresholds import ThresholdConfig, calibrate

    run = Path(run_dir)
    members, card = load_checkpoint(run / "model.pt")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text()) if (run / "recipe.yaml").exists() else {}
    th = thresholds if thresholds is not None else recipe.get("thresholds")
    if th is None:
        raise EdgedermError(f"{run}: no threshold targets (the recipe has none; pass them)")
    old = json.loads((run / "metrics.json").read_text())
    n_boot, seed = int(recipe.get("n_boot", 1000)), int(recipe.get("seed", 42))
    results = {}
    for split in ("val", "test"):
        d = np.load(run / "predictions" / f"{split}.npz")
        if [str(c) for c in d["classes"]] != card.classes:
            raise DataError(f"{run}/predictions/{split}.npz: classes differ from the card's")
        kept = [SimpleNamespace(label=card.classes[int(y)], group=str(g), image_id=str(i))
                for y, g, i in zip(d["y_true"], d["groups"], d["image_ids"])]
        results[split] = (kept, d["probs"])
    index = SimpleNamespace(classes=card.classes, name=card.data.get("dataset", "?"))
    y_val = np.array([card.classes.index(r.label) for r in results["val"][0]])
    card.decision = calibrate(y_val, results["val"][1], card.classes, ThresholdConfig.from_dict(th),
                              calibrated_on={"recalibrated": True}).decision
    views = card.tta.get("views", [])
    scored = {s: score(index, kept, probs, card.decision, n_boot=n_boot, seed=seed, views=views)  # type: ignore[arg-type]
              for s, (kept, probs) in results.items()}
    for s in ("val", "test"):
        scored[s].dataset = old[s].get("dataset", scored[s].dataset)
        scored[s].skipped = [Skipped(i, "") for i in range(old[s].get("skipped", 0))]  # counts only
    metrics = _run_metrics(card, scored["val"], scored["test"], thresholds=True, n_boot=n_boot, seed=seed)
    for k, v in old.items():
        if k not in ("val", "test", "clinical"):
            metrics[k] = v
    metrics["val"]["note"] = old["val"].get("note", "validation split")
    metrics["recalibrated"] = True
    save_checkpoint(run / "model.pt", members, card)
    _write_predictions(run, scored)
    write_json_atomic(run / "metrics.json", jsonable(metrics))
    if (run / "report.md").exists():
        from ..report import write_run_report

        try:
            write_run_report(run)
        except Exception as e:  # noqa: BLE001
            log.warning("report.md not rewritten: %s", e)
    return metrics


def _validation_probs(
    cfg: TrainConfig,
    card: ArtifactCard,
    infos: list[dict[str, Any]],
    kept: list[Any],
    per_member: list[np.ndarray],
    y_val: np.ndarray,
    groups: list[str],
    assignment: dict[str, Any],
) -> tuple[np.ndarray, str]:
    """Validation probabilities the thresholds are calibrated on, and what they are.

    k-fold: each image is scored only by the members that held its fold out (out-of-fold).
    Stacking: the stacker is fitted on all validation data for the card, but the probabilities
    used downstream are cross-fitted (grouped by lesion) so thresholds never see a stacker that
    was fitted on the same images.
    """
    weights = np.array([i["weight"] for i in infos])
    if cfg.cv_folds > 1:
        fold_of = np.array([assignment[r.image_id] for r in kept])
        probs = np.zeros_like(per_member[0])
        for f in range(cfg.cv_folds):
            rows = fold_of == f
            idx = [m for m, i in enumerate(infos) if i["fold"] == f]
            w = weights[idx] / weights[idx].sum()
            probs[rows] = sum(wi * per_member[m][rows] for wi, m in zip(w, idx))
        note = f"out-of-fold predictions of the {cfg.cv_folds} fold models"
    else:
        probs = sum(w * p for w, p in zip(weights, per_member)) / weights.sum()
        note = "validation split"
    if cfg.combine == "stacking":
        if cfg.cv_folds > 1:
            raise EdgedermError("combine: stacking with cv_folds is not supported; use bacc_weighted")
        from ..stacking import cross_fitted_predictions, fit_stacking

        inputs = [np.log(np.clip(p, 1e-7, 1.0)) for p in per_member]
        card.model["combine"] = "logit_stacking"
        card.model["stacking"] = fit_stacking(inputs, y_val)
        # k folds by lesion; a class with fewer lesions than folds would leave a fold's stacker
        # unable to predict it, so k shrinks to the rarest class's lesion count (at least 2).
        lesions = [len({g for g, t in zip(groups, y_val) if t == c}) for c in np.unique(y_val)]
        k = min(5, min(lesions))
        if k < 2 or len(lesions) < len(card.classes):
            raise DataError("combine: stacking needs every class on at least 2 validation lesions; use bacc_weighted")
        probs = cross_fitted_predictions(inputs, y_val, groups, k=k)
        note += f" (stacker cross-fitted by lesion, {k} folds)"
    return probs, note


def _write_predictions(run_dir: Path, results: dict[str, EvalResult]) -> None:
    from ..fsutil import atomic_path

    out = run_dir / "predictions"
    out.mkdir(exist_ok=True)
    for split, r in results.items():
        with atomic_path(out / f"{split}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh, y_true=r.y_true, probs=r.probs, y_pred=r.y_pred, image_ids=np.array(r.image_ids),
                    groups=np.array(r.groups), classes=np.array(r.classes),
                )


def _extras(cfg: TrainConfig, run_dir: Path) -> None:
    """Grad-CAM grid + CAM-in-mask score, plots and report.md (none of them changes a metric).

    A failure here is logged, not raised: the checkpoint and metrics are already written and a
    plotting problem must not make a finished run look failed.
    """
    if cfg.gradcam:
        from ..explain import explain_run

        g = dict(cfg.gradcam)
        try:
            explain_run(run_dir / "model.pt", g.pop("data"), g.pop("format", "auto"), run_dir, **g)
        except Exception as e:  # noqa: BLE001
            log.warning("Grad-CAM skipped: %s", e)
    if cfg.report:
        from ..report import write_run_report

        try:
            write_run_report(run_dir)
        except Exception as e:  # noqa: BLE001
            log.warning("report.md not written: %s", e)


# -- several seeds --------------------------------------------------------------------------------
SEED_METRICS = ("bacc", "macro_auc", "mel_sensitivity", "mel_specificity", "accuracy", "macro_f1")


def train_seeds(cfg: TrainConfig, *, resume: bool = False, on_epoch_end: EpochCallback | None = None) -> Path:
    """One run per seed on one shared split; ``seeds.json`` holds per-seed metrics and mean ± sd.

    The split is made once (with the recipe's ``seed``), so the spread measures training
    variance, not split luck.
    """
    assert cfg.seeds
    root = cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    split_file = cfg.split_file or str(root / "split.csv")
    if not Path(split_file).exists():
        prepare_data(dataclasses.replace(cfg, split_file=split_file))
    runs = []
    for s in cfg.seeds:
        sub = dataclasses.replace(cfg, seed=s, seeds=None, split_file=split_file, out=str(root), name=f"seed-{s}")
        if resume or not sub.run_dir.joinpath("model.pt").exists():
            _train_one(sub, resume=resume, on_epoch_end=on_epoch_end)
        import json

        m = json.loads((sub.run_dir / "metrics.json").read_text())
        runs.append({"seed": s, "run": str(sub.run_dir), "test": {k: m["test"]["metrics"].get(k) for k in SEED_METRICS},
                     "val": {k: m["val"]["metrics"].get(k) for k in SEED_METRICS}})
    summary: dict[str, Any] = {"seeds": list(cfg.seeds), "runs": runs, "mean_sd": {}}
    for split in ("val", "test"):
        summary["mean_sd"][split] = {}
        for k in SEED_METRICS:
            vals = [r[split][k] for r in runs if isinstance(r[split][k], (int, float))]
            if vals:
                summary["mean_sd"][split][k] = {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    write_json_atomic(root / "seeds.json", summary)
    lines = ["| metric (test) | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " | mean ± sd |", "|---|" + "---:|" * (len(cfg.seeds) + 1)]
    for k in SEED_METRICS:
        ms = summary["mean_sd"]["test"].get(k)
        if ms:
            cells = " | ".join(f"{r['test'][k]:.3f}" if r["test"][k] is not None else "—" for r in runs)
            lines.append(f"| {k} | {cells} | {ms['mean']:.3f} ± {ms['sd']:.3f} |")
    write_text_atomic(root / "seeds.md", "\n".join(lines) + "\n")
    log.info("seeds summary: %s", root / "seeds.md")
    return root


# -- ablations ------------------------------------------------------------------------------------
VARIANT_METRICS = ("bacc", "macro_auc", "mel_sensitivity", "mel_specificity", "accuracy")


def train_variants(cfg: TrainConfig, *, resume: bool = False, on_epoch_end: EpochCallback | None = None) -> Path:
    """Train each variant on one shared split; ``variants.md`` compares them on the test split.

    Each row carries the variant's lesion-level bootstrap CIs and the paired bootstrap of its
    BACC difference to the first variant (the baseline) on the same resampled lesions, plus
    McNemar's p on the same images: an ablation table that says which differences are real.
    """
    import json

    from ..metrics import mcnemar, paired_bootstrap
    from .config import variant_config

    assert cfg.variants
    root = cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    split_file = cfg.split_file or str(root / "split.csv")
    if not Path(split_file).exists():
        prepare_data(dataclasses.replace(cfg, variants=None, split_file=split_file))
    rows: list[dict[str, Any]] = []
    preds: dict[str, Any] = {}
    for v in cfg.variants:
        sub = dataclasses.replace(variant_config(cfg, v), split_file=split_file, out=str(root), name=str(v["name"]))
        if resume or not sub.run_dir.joinpath("model.pt").exists():
            _train_one(sub, resume=resume, on_epoch_end=on_epoch_end)
        m = json.loads((sub.run_dir / "metrics.json").read_text())
        preds[v["name"]] = np.load(sub.run_dir / "predictions" / "test.npz")
        rows.append({"name": v["name"], "run": str(sub.run_dir), "models": [mm.model for mm in sub.members],
                     "kwargs": [mm.kwargs for mm in sub.members], "test": m["test"]["ci"],
                     "train_seconds": m["train_seconds"]})
    base = cfg.variants[0]["name"]
    b = preds[base]
    for row in rows:
        p = preds[row["name"]]
        if not np.array_equal(p["image_ids"], b["image_ids"]):
            raise EdgedermError(f"variants {base!r} and {row['name']!r} were scored on different test images")
        if row["name"] == base:
            continue
        classes = [str(c) for c in b["classes"]]
        row["vs_baseline"] = {
            "bacc": paired_bootstrap(b["y_true"], b["y_pred"], p["y_pred"], classes, groups=b["groups"],
                                     n_boot=cfg.n_boot, seed=cfg.seed),
            "mcnemar": mcnemar(b["y_true"], b["y_pred"], p["y_pred"]),
        }
    write_json_atomic(root / "variants.json", jsonable({"baseline": base, "variants": rows}))
    write_text_atomic(root / "variants.md", format_variants(rows, base))
    return root


def format_variants(rows: list[dict[str, Any]], base: str) -> str:
    """Markdown: one row per variant, test metrics with 95% CIs, ΔBACC vs the baseline."""

    def ci(d: dict[str, Any] | None) -> str:
        if not d or d.get("value") is None:
            return "—"
        return format_ci_entry(d)

    head = "| variant | " + " | ".join(VARIANT_METRICS) + f" | ΔBACC vs {base} [95% CI] | McNemar p |"
    lines = [head, "|---|" + "---:|" * (len(VARIANT_METRICS) + 2)]
    for r in rows:
        cells = " | ".join(ci(r["test"].get(k)) for k in VARIANT_METRICS)
        vs = r.get("vs_baseline")
        if vs:
            d = vs["bacc"]
            delta = format_ci_entry(d, key="diff", signed=True)
            p = f"{vs['mcnemar']['p_value']:.3g}"
        else:
            delta, p = "(baseline)", "—"
        lines.append(f"| {r['name']} | {cells} | {delta} | {p} |")
    return "\n".join(lines) + "\n"
