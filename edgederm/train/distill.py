"""Knowledge distillation: one student from a run's ensemble + TTA teacher.

``distill(RUN, student="efficientnet_lite0")`` trains a single model on the soft targets of the
run's ``model.pt`` — the exact teacher the gate compares against, loaded through the runtime with
its card's combine rule and (``teacher_tta=True``) the card's TTA views — plus the hard labels:

    loss = alpha * T**2 * KL(q_T || softmax(s / T)) + (1 - alpha) * CE_w(s, y)

``q_T = softmax(log p_teacher / T)`` (the teacher's probabilities softened at temperature ``T``),
``s`` the student's logits, ``KL`` torch's ``kl_div(log_softmax(s / T), q_T, "batchmean")``
(Hinton et al. 2015: the teacher's distribution is the target), ``CE_w`` the cross-entropy with the
class weights the run's recipe asks for (``class_weights`` scheme under ``sampler: shuffle``, none
under a resampling sampler — as the trainer does). ``T**2`` keeps the soft term's gradient scale
independent of ``T``.

**Teacher targets and augmentation.** Teacher probabilities are computed once per image (not per
augmented view: on this CPU the ensemble + 10-view TTA costs more than a student epoch), cached in
``RUN/distill-<student>/teacher.npz`` keyed by image id and the teacher checkpoint's SHA-256 (which
covers the weights and the embedded card) plus the views used, so a changed teacher is never
reused. The student therefore sees augmented images with the targets of the un-augmented image.
That is only sound for augmentations the teacher's prediction is (nearly) invariant to, so the
default ``augment="mild"`` is: the 8 dihedral orientations (dermoscopy has no "up"; with the card's
TTA the teacher target is itself the average over all 8, hence exactly invariant), a small rotation
(±15°, half the time), mild brightness/contrast/saturation jitter and no hue shift, on the eval
framing (no random crops, which could cut away the structures the teacher's target is about).
``augment="none"`` trains on the eval framing only.

Everything else is the trainer's (``train_member``): the run's split (its ``split.csv``; the test
split is not read until the student is final), sampler, class weights, schedule, early stopping on
validation BACC, per-epoch atomic state and ``resume``. The output folder holds ``model.pt`` (a
single-member checkpoint whose card records the student's own preprocessing, its TTA views —
identity only by default: the student is what phones run —, thresholds re-calibrated for the
student on validation with the run's targets, and ``model.distillation``: the teacher's path,
SHA-256, recorded metrics and views, T, alpha and the student's top-1 agreement with the teacher on
validation and test), ``metrics.json`` (val/test through the runtime with lesion-level CIs, the
clinical report, the paired comparison with the teacher), ``predictions/``, ``history.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..card import ArtifactCard, load_card, provenance, sidecar_path
from ..checkpoint import member_from_model, save_checkpoint
from ..data.records import DatasetIndex
from ..data.splits import apply_split
from ..errors import DataError, EdgedermError
from ..fsutil import atomic_path, jsonable, sha256_file, write_json_atomic
from ..models import get_model_spec
from ..provenance import command, record_command
from ..tta import check_views
from .config import MemberConfig, TrainConfig, load_recipe, validate
from .loop import EpochCallback, train_member
from .losses import build_loss

if TYPE_CHECKING:
    import typer

log = logging.getLogger(__name__)

__all__ = [
    "AUGMENT",
    "DistillationLoss",
    "TeacherTargets",
    "distill",
    "register",
    "soft_targets",
    "teacher_probabilities",
]

#: Student augmentation under teacher targets of the un-augmented image (see the module doc).
AUGMENT: dict[str, dict[str, Any]] = {
    "mild": {"dihedral": True, "rotation": 15.0, "rotation_p": 0.5, "color_jitter": [0.1, 0.1, 0.05, 0.0]},
    "none": {},
}

# Teacher probabilities are clipped before the log so a probability that underflowed to 0 gives a
# finite soft target (softmax(log p / T) of -inf would be 0 anyway; the clip only avoids NaNs).
_LOG_FLOOR = 1e-8
CACHE_VERSION = 1


# -- the objective ----------------------------------------------------------------------------------
def soft_targets(teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's distribution at temperature ``T``: ``softmax(log p / T)`` (``T=1`` gives ``p``)."""
    logp = torch.log(teacher_probs.double().clamp_min(_LOG_FLOOR))
    return torch.softmax(logp / temperature, dim=1).to(teacher_probs.dtype)


class DistillationLoss(nn.Module):
    """``alpha * T^2 * KL(q_T || softmax(s/T)) + (1 - alpha) * hard(s, y)``.

    Called as ``loss(student_logits, y, teacher_log_probs)``; ``teacher_log_probs`` are
    ``log p_teacher`` (N, C) and are softened here, so one cached array serves every ``T``.
    """

    def __init__(self, temperature: float, alpha: float, hard: nn.Module) -> None:
        super().__init__()
        _check_kd(temperature, alpha)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.hard = hard

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        logits = logits.float()
        q = torch.softmax(teacher_log_probs.float() / t, dim=1)
        kd = F.kl_div(F.log_softmax(logits / t, dim=1), q, reduction="batchmean")
        return self.alpha * t * t * kd + (1.0 - self.alpha) * self.hard(logits, target)


def _check_kd(temperature: float, alpha: float) -> None:
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise EdgedermError(f"distillation temperature must be a number > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise EdgedermError(f"distillation alpha (weight of the soft-target term) must be in [0, 1], got {alpha!r}")


class TeacherTargets(Dataset):
    """The training ``ImageDataset`` with each item's teacher log-probabilities appended."""

    def __init__(self, base: Any, teacher_log_probs: torch.Tensor) -> None:
        if len(teacher_log_probs) != len(base):
            raise EdgedermError(f"{len(teacher_log_probs)} teacher rows for {len(base)} training images")
        self.base = base
        self.teacher = teacher_log_probs.float()
        self.targets = base.targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        x, y = self.base[i]
        return x, y, self.teacher[i]


# -- the teacher ----------------------------------------------------------------------------------
def teacher_probabilities(
    teacher: str | Path,
    index: DatasetIndex,
    *,
    views: Sequence[str] | None = None,
    cache: str | Path | None = None,
    batch_size: int = 32,
) -> tuple[np.ndarray, int]:
    """The teacher's probabilities for every image of ``index`` (rows in its order) and how many
    rows had to be computed (0: all came from the cache).

    The teacher runs through ``edgederm.runtime.load`` (card combine rule, ``views`` = the card's
    TTA views when ``None``). ``cache`` (an ``.npz``) keeps rows by image id under a key of the
    checkpoint's SHA-256 and the views; rows computed now are added to it. A different key
    discards the cache.
    """
    from ..evaluate import predict_index
    from ..runtime import load

    teacher = Path(teacher)
    predictor = None
    if views is None:
        predictor = load(teacher)
        views = predictor.views(None)
    key = {"version": CACHE_VERSION, "teacher_sha256": sha256_file(teacher), "views": list(views)}
    known = _read_cache(Path(cache), key) if cache is not None else {}
    missing = [i for i, r in enumerate(index.records) if r.image_id not in known]
    if missing:
        predictor = predictor or load(teacher)
        sub = index.subset(missing, name=f"{index.name}:teacher")
        log.info("teacher: %d images x %d views (%s)", len(missing), len(views), teacher)
        kept, skipped, probs = predict_index(predictor, sub, tta=list(views), batch_size=batch_size)
        if skipped:
            raise DataError(f"teacher: {len(skipped)} image(s) the run could read are unreadable now (e.g. {skipped[0].reason})")
        assert isinstance(probs, np.ndarray)
        for r, p in zip(kept, probs):
            known[r.image_id] = p
        if cache is not None:
            _write_cache(Path(cache), key, known)
    else:
        log.info("teacher: %d images from the cache %s", len(index), cache)
    return np.stack([known[r.image_id] for r in index.records]), len(missing)


def _read_cache(path: Path, key: dict[str, Any]) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["key"]))
            ids, probs = z["image_ids"], z["probs"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        log.warning("teacher cache %s unreadable (%s); recomputing", path, e)
        return {}
    if stored != key:
        log.info("teacher cache %s is for another teacher or views; recomputing", path)
        return {}
    return {str(i): p for i, p in zip(ids, probs)}


def _write_cache(path: Path, key: dict[str, Any], rows: dict[str, np.ndarray]) -> None:
    ids = sorted(rows)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, key=np.array(json.dumps(key)), image_ids=np.array(ids),
                     probs=np.stack([rows[i] for i in ids]).astype(np.float64))


# -- the run being distilled ---------------------------------------------------------------------
def _run_recipe(run_dir: Path, data: str | Path | None) -> TrainConfig:
    recipe = run_dir / "recipe.yaml"
    if not recipe.exists():
        raise EdgedermError(f"{run_dir} has no recipe.yaml: not a training run folder")
    cfg = load_recipe(recipe, data=str(data) if data is not None else None)
    if cfg.cv_folds > 1:
        raise EdgedermError(f"{run_dir} is a {cfg.cv_folds}-fold CV run: its members saw every non-test image; distil a run with a train/val/test split")
    return cfg


def _split_file(run_dir: Path, card: ArtifactCard, cfg: TrainConfig) -> Path:
    """The run's own split file (the copy in the run folder first: folders get moved)."""
    for cand in (run_dir / "split.csv", cfg.split_file, card.data.get("split_file")):
        if cand and Path(cand).exists():
            path = Path(cand)
            break
    else:
        raise EdgedermError(f"{run_dir}: its split file is gone ({card.data.get('split_file')}); the student must use the run's split")
    want = card.data.get("split_sha256")
    if want and sha256_file(path) != want:
        raise DataError(f"{path} differs from the split the teacher was trained on (SHA-256 mismatch)")
    return path


def _threshold_config(cfg: TrainConfig, card: ArtifactCard) -> dict[str, Any] | None:
    """The run's clinical targets: its recipe's threshold config, else the card's targets."""
    if cfg.thresholds is not None:
        return dict(cfg.thresholds)
    targets = card.decision.get("targets")
    if not targets:
        return None
    out: dict[str, Any] = {"targets": [{"class": c, **v} for c, v in targets.items()]}
    if card.decision.get("criterion"):
        out["criterion"] = card.decision["criterion"]
    return out


def _teacher_entry(teacher: Path, card: ArtifactCard, views: list[str]) -> dict[str, Any]:
    keep = ("bacc", "mel_sensitivity", "mel_specificity", "macro_auc")
    return {
        "path": str(teacher.resolve()),
        "name": card.name,
        "sha256": sha256_file(teacher),
        "members": [m.get("name") for m in card.model.get("members", [])],
        "combine": card.model.get("combine", "weighted_mean"),
        "tta_views": views,
        "card_tta_views": list(card.tta.get("views", ["identity"])),
        "decision": card.decision.get("rule", "argmax"),
        "metrics": {s: {k: card.metrics[s][k] for k in keep if k in card.metrics.get(s, {})}
                    for s in ("val", "test") if s in card.metrics},
    }


# -- distillation -----------------------------------------------------------------------------------
def distill(
    run_dir: str | Path,
    *,
    student: str = "efficientnet_lite0",
    input_size: int | None = None,
    epochs: int = 10,
    temperature: float = 4.0,
    alpha: float = 0.7,
    teacher_tta: bool = True,
    pretrained: bool | None = None,
    weights: str | Path | None = None,
    from_scratch: bool = False,
    lr: float = 1e-3,
    batch_size: int = 32,
    weight_decay: float = 1e-2,
    schedule: str = "cosine",
    warmup: float = 0.1,
    seed: int | None = None,
    patience: int | None = None,
    augment: str = "mild",
    student_tta: Sequence[str] = ("identity",),
    student_kwargs: dict[str, Any] | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    n_boot: int | None = None,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
) -> Path:
    """Distil ``RUN/model.pt`` into one ``student``; returns the output folder
    (default ``RUN/distill-<student>``).

    Initialisation is explicit like the trainer's: ImageNet weights (``pretrained``, the default
    when neither ``weights`` nor ``from_scratch`` is given), a local state dict (``weights``) or
    ``from_scratch``. ``seed``, ``patience`` and ``n_boot`` default to the run's; ``data`` points
    at the run's data set when it has moved. ``resume`` continues an interrupted distillation (or
    re-scores a finished one) with the same settings.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    teacher = run_dir / "model.pt"
    if not teacher.exists():
        hint = " (a seeds/variants run: distil one of its sub-runs)" if any(run_dir.glob("*/model.pt")) else ""
        raise EdgedermError(f"{run_dir} has no model.pt: not a finished training run{hint}")
    _check_kd(temperature, alpha)
    if augment not in AUGMENT:
        raise EdgedermError(f"augment={augment!r}; choose one of {', '.join(AUGMENT)}")
    spec_info = get_model_spec(student)  # unknown names fail here, with the registry's suggestion
    if pretrained is None:
        pretrained = weights is None and not from_scratch
    if pretrained and spec_info.pretrained_source == "none":
        raise EdgedermError(f"{student} has no pretrained weights; use from_scratch (--from-scratch)")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise EdgedermError(f"epochs, batch_size and lr must be positive (got {epochs}, {batch_size}, {lr})")
    try:
        views_out = check_views(list(student_tta))
    except ValueError as e:
        raise EdgedermError(f"student TTA: {e}") from None

    tcard = load_card(teacher)
    rcfg = _run_recipe(run_dir, data)
    split_path = _split_file(run_dir, tcard, rcfg)
    out_dir = Path(out) if out is not None else run_dir / f"distill-{student}"
    if out_dir.joinpath("model.pt").exists() and not resume:
        raise EdgedermError(f"{out_dir} already holds a finished distillation; use --resume to re-score it, or remove the folder")
    if threads or rcfg.threads:
        torch.set_num_threads(int(threads or rcfg.threads))
    t_views = list(tcard.tta.get("views", ["identity"])) if teacher_tta else ["identity"]
    check_views(t_views)

    mcfg = MemberConfig(
        model=student, input_size=input_size, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, pretrained=bool(pretrained) and weights is None,
        weights=str(weights) if weights is not None else None, from_scratch=from_scratch,
        loss="ce", schedule=schedule, warmup=warmup, kwargs=dict(student_kwargs or {}),
    )
    scfg = dataclasses.replace(
        rcfg, name=out_dir.name, out=str(out_dir.parent), members=[mcfg], split_file=str(split_path),
        augment="tiers", tiers={"thresholds": [], "boost": {}, "tiers": {augment: AUGMENT[augment]}},
        seed=rcfg.seed if seed is None else int(seed), patience=rcfg.patience if patience is None else int(patience),
        tta=views_out, device=device, threads=threads or rcfg.threads, n_boot=rcfg.n_boot if n_boot is None else int(n_boot),
        seeds=None, variants=None, gradcam=None, report=False,
    )
    validate(scfg, "distill")
    settings = {
        "teacher_sha256": sha256_file(teacher), "teacher_views": t_views, "student": mcfg.model,
        "input_size": mcfg.input_size, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "schedule": schedule, "warmup": warmup, "init": _init(mcfg),
        "weights": mcfg.weights, "kwargs": mcfg.kwargs, "temperature": float(temperature), "alpha": float(alpha),
        "augment": augment, "seed": scfg.seed, "patience": scfg.patience, "split_sha256": sha256_file(split_path),
    }
    _check_settings(out_dir, settings, resume)

    # Data: exactly the trainer's reading of the run's data and split (leakage re-checked).
    from .run import prepare_data

    index, assignment, _ = prepare_data(scfg)
    tcard.check_classes(index.classes, what=f"data set {index.name!r}")
    splits = apply_split(index, assignment)
    classes = list(index.classes)

    # Teacher targets on train + val only: the test split stays unseen until the student is final.
    t0 = time.perf_counter()
    seen = {"train", "val"}
    trval = index.subset([i for i, r in enumerate(index.records) if assignment[r.image_id] in seen], name=f"{index.name}:train+val")
    cache = out_dir / "teacher.npz"
    t_probs, n_computed = teacher_probabilities(teacher, trval, views=t_views, cache=cache, batch_size=max(batch_size, 16))
    teacher_seconds = time.perf_counter() - t0
    by_id = {r.image_id: p for r, p in zip(trval.records, t_probs)}
    train_t = torch.tensor(np.stack([by_id[r.image_id] for r in splits["train"].records]))
    train_logp = torch.log(train_t.clamp_min(_LOG_FLOOR)).float()
    agree_train = float(np.mean(train_t.numpy().argmax(1) == np.array(splits["train"].targets())))
    log.info("teacher: top-1 accuracy on the training images %.3f (%d computed, %d cached, %.0fs)",
             agree_train, n_computed, len(trval) - n_computed, teacher_seconds)

    def make_loss(weight: torch.Tensor | None) -> nn.Module:
        return DistillationLoss(temperature, alpha, build_loss("ce", class_weight=weight))

    model, spec, state = train_member(
        scfg, mcfg, 0, splits, mdir=out_dir / "members" / f"0-{student}", resume=resume, on_epoch_end=on_epoch_end,
        wrap_train=lambda ds: TeacherTargets(ds, train_logp), make_loss=make_loss,
    )
    info = {
        "name": student, "slot": 0, "val_bacc": state["best_bacc"], "best_epoch": state["best_epoch"],
        "preprocessing": spec.to_dict(), "init": _init(mcfg), "loss": f"distillation(T={temperature:g}, alpha={alpha:g}) + ce",
        "weight": 1.0,
    }
    member = member_from_model(student, model, len(classes), **mcfg.kwargs)
    distillation = {
        "teacher": _teacher_entry(teacher, tcard, t_views),
        "temperature": float(temperature),
        "alpha": float(alpha),
        "objective": "alpha*T^2*KL(softmax(log p_teacher/T) || softmax(s/T)) + (1-alpha)*CE_weighted(s, y)",
        "augment": {"mode": augment, "params": AUGMENT[augment],
                    "note": "teacher targets of the un-augmented image (TTA-averaged) used for mild, near-invariant augmentations"},
        "teacher_cache": {"file": cache.name, "computed": n_computed, "reused": len(trval) - n_computed},
    }
    model_entry: dict[str, Any] = {
        "kind": "single", "combine": "weighted_mean", "output": "logits", "members": [info],
        "training": {"objective": "distillation", "sampler": scfg.sampler, "class_weights": scfg.class_weights,
                     "seed": scfg.seed, "epochs": epochs, "lr": lr, "batch_size": batch_size, "schedule": schedule},
        "distillation": distillation,
    }
    if tcard.model.get("segmenter"):
        model_entry["segmenter"] = tcard.model["segmenter"]
    card = ArtifactCard(
        name=f"{tcard.name}-distill-{student}",
        classes=classes,
        taxonomy=tcard.taxonomy,
        preprocessing=spec,
        model=model_entry,
        tta={"views": views_out},
        data={
            "dataset": index.name, "root": str(Path(scfg.data).resolve()), "format": scfg.format,
            "fingerprint": index.fingerprint(), "split_file": str(split_path.resolve()),
            "split_sha256": settings["split_sha256"], "counts": {k: len(v) for k, v in splits.items()},
            "skipped": len(index.skipped),
        },
        provenance=provenance(command=command(), teacher=str(teacher.resolve())),
    )
    metrics = _finish(out_dir, scfg, card, member, splits, teacher, t_views, tcard, by_id, cache, distillation)
    metrics["teacher_seconds"] = teacher_seconds
    metrics["distill_seconds"] = time.perf_counter() - t_start
    metrics["history"] = state["history"]
    write_json_atomic(out_dir / "metrics.json", jsonable(metrics))
    write_json_atomic(out_dir / "history.json", {f"0-{student}": state["history"]})
    log.info("distillation finished in %.0fs: %s", metrics["distill_seconds"], out_dir)
    return out_dir


def _init(m: MemberConfig) -> str:
    return "pretrained" if m.pretrained else "weights" if m.weights else "scratch"


def _check_settings(out_dir: Path, settings: dict[str, Any], resume: bool) -> None:
    """``resume`` must continue with what the saved state was trained with (teacher included)."""
    path = out_dir / "distill.json"
    if resume and path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            what = "the teacher changed" if "teacher_sha256" in changed else f"settings differ: {', '.join(changed)}"
            raise EdgedermError(f"cannot resume {out_dir}: {what} since it started; remove the folder to start over")
    write_json_atomic(path, settings)


def _finish(
    out_dir: Path,
    cfg: TrainConfig,
    card: ArtifactCard,
    member: Any,
    splits: dict[str, DatasetIndex],
    teacher: Path,
    t_views: list[str],
    tcard: ArtifactCard,
    teacher_by_id: dict[str, np.ndarray],
    cache: Path,
    distillation: dict[str, Any],
) -> dict[str, Any]:
    """Score the student through the runtime (val → thresholds → test), compare with the teacher."""
    from ..evaluate import predict_index, score
    from ..metrics import mcnemar, paired_bootstrap
    from ..runtime import load
    from .run import _write_predictions

    classes = card.classes
    unscored = out_dir / ".model.unscored.pt"
    save_checkpoint(unscored, [member], card)
    kept, skipped, val_probs = predict_index(load(unscored), splits["val"])
    assert isinstance(val_probs, np.ndarray)
    y_val = np.array([classes.index(r.label) for r in kept])
    tcfg = _threshold_config(cfg, tcard)
    if tcfg is not None:
        from ..thresholds import ThresholdConfig, calibrate

        card.decision = calibrate(y_val, val_probs, classes, ThresholdConfig.from_dict(tcfg),
                                  calibrated_on={"probs": f"student, views {'+'.join(card.tta['views'])}"}).decision
    val = score(splits["val"], kept, val_probs, card.decision, n_boot=cfg.n_boot, seed=cfg.seed, skipped=skipped, views=card.tta["views"])
    save_checkpoint(unscored, [member], card)
    # The student is final: only now is the test split looked at (student and teacher).
    kept_t, skipped_t, test_probs = predict_index(load(unscored), splits["test"])
    assert isinstance(test_probs, np.ndarray)
    test = score(splits["test"], kept_t, test_probs, card.decision, n_boot=cfg.n_boot, seed=cfg.seed, skipped=skipped_t, views=card.tta["views"])
    t_test, _ = teacher_probabilities(teacher, splits["test"], views=t_views, cache=cache)
    teacher_by_id = {**teacher_by_id, **{r.image_id: p for r, p in zip(splits["test"].records, t_test)}}

    agreement: dict[str, Any] = {}
    vs_teacher: dict[str, Any] = {}
    for name, res in (("val", val), ("test", test)):
        tp = np.stack([teacher_by_id[i] for i in res.image_ids])
        t_dec = _decide(tp, classes, tcard.decision)
        agreement[name] = float(np.mean(res.probs.argmax(1) == tp.argmax(1)))
        agreement[f"{name}_decision"] = float(np.mean(res.y_pred == t_dec))
        vs_teacher[name] = {
            "bacc": paired_bootstrap(res.y_true, t_dec, res.y_pred, classes, groups=res.groups, n_boot=max(cfg.n_boot, 1), seed=cfg.seed),
            "mcnemar": mcnemar(res.y_true, t_dec, res.y_pred),
        }
    distillation["teacher_agreement"] = {"val": agreement["val"], "test": agreement["test"],
                                         "val_decision": agreement["val_decision"], "test_decision": agreement["test_decision"],
                                         "metric": "top-1 (argmax) agreement; *_decision: each model under its own card's rule"}
    metrics: dict[str, Any] = {"val": val.summary(), "test": test.summary()}
    metrics["val"]["note"] = "validation split (thresholds calibrated on it; early stopping on its BACC)"
    if card.decision.get("rule") != "argmax" or tcfg is not None:
        from ..thresholds import clinical_report

        metrics["clinical"] = {s: clinical_report(r.y_true, r.probs, classes, card.decision, groups=r.groups, n_boot=cfg.n_boot, seed=cfg.seed)
                               for s, r in (("val", val), ("test", test))}
    metrics["teacher_agreement"] = distillation["teacher_agreement"]
    metrics["vs_teacher"] = vs_teacher  # paired bootstrap of BACC(student) - BACC(teacher), McNemar
    metrics["teacher"] = distillation["teacher"]
    card.metrics = {s: {"n": metrics[s]["n"], **metrics[s]["ci"]} for s in ("val", "test")}
    if "clinical" in metrics:
        card.metrics["clinical_test"] = jsonable(metrics["clinical"]["test"])
    save_checkpoint(out_dir / "model.pt", [member], card)
    unscored.unlink()
    sidecar_path(unscored).unlink()
    _write_predictions(out_dir, {"val": val, "test": test})
    return metrics


def _decide(probs: np.ndarray, classes: list[str], decision: dict[str, Any]) -> np.ndarray:
    from ..decision import decide

    return decide(probs, classes, decision)


# -- CLI ------------------------------------------------------------------------------------------
def register(app: typer.Typer) -> None:
    """Add ``edgederm distill`` to a typer app."""
    import typer

    @app.command("distill")
    def distill_cmd(
        run: Path = typer.Argument(..., help="Run folder whose model.pt (ensemble + TTA) is the teacher."),
        student: str = typer.Option("efficientnet_lite0", help="Student architecture (see `edgederm models`)."),
        input_size: Optional[int] = typer.Option(None, help="Student input size (default: the registry's)."),
        epochs: int = typer.Option(10, help="Maximum epochs (early stopping on validation BACC)."),
        temperature: float = typer.Option(4.0, help="Softening temperature T of the teacher's targets."),
        alpha: float = typer.Option(0.7, help="Weight of the soft-target term (1 - alpha: hard labels)."),
        teacher_tta: bool = typer.Option(True, "--teacher-tta/--no-teacher-tta", help="Teacher targets averaged over the card's TTA views."),
        pretrained: bool = typer.Option(True, "--pretrained/--from-scratch", help="Student initialisation."),
        weights: Optional[Path] = typer.Option(None, help="Initialise the student from a local state dict."),
        lr: float = typer.Option(1e-3),
        batch_size: int = typer.Option(32),
        seed: Optional[int] = typer.Option(None, help="Default: the run's seed."),
        augment: str = typer.Option("mild", help="Student augmentation: mild | none."),
        student_tta: str = typer.Option("identity", help="Comma-separated TTA views the student's card prescribes."),
        model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", help="Student build argument key=value, repeatable (e.g. width=16)."),
        threads: Optional[int] = typer.Option(None),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        resume: bool = typer.Option(False, help="Continue an interrupted distillation (or re-score a finished one)."),
    ) -> None:
        """Distil a run's ensemble + TTA teacher into one student (soft targets + hard labels, same split)."""
        import yaml

        from ..metrics import format_metrics_table

        kwargs: dict[str, Any] = {}
        for item in model_arg or []:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise EdgedermError(f"--model-arg takes key=value, got {item!r}")
            kwargs[k] = yaml.safe_load(v)
        record_command()
        out = distill(
            run, student=student, input_size=input_size, epochs=epochs, temperature=temperature, alpha=alpha,
            teacher_tta=teacher_tta, pretrained=pretrained and weights is None, weights=weights,
            from_scratch=not pretrained and weights is None, lr=lr, batch_size=batch_size, seed=seed, augment=augment,
            student_tta=[v.strip() for v in student_tta.split(",") if v.strip()], student_kwargs=kwargs,
            threads=threads, device=device, resume=resume,
        )
        m = json.loads((out / "metrics.json").read_text())
        ag = m["teacher_agreement"]
        typer.echo(f"\nstudent: {out / 'model.pt'}  ({m['distill_seconds']:.0f} s)")
        typer.echo(f"top-1 agreement with the teacher: val {ag['val']:.3f}, test {ag['test']:.3f}")
        typer.echo(f"test split, n={m['test']['n']}, lesion-level bootstrap 95% CIs:")
        typer.echo(format_metrics_table(m["test"]["ci"]))
        if "clinical" in m:
            from ..thresholds import format_clinical_table

            typer.echo("clinical operating points on the test split (student thresholds from validation):")
            typer.echo(format_clinical_table(m["clinical"]["test"]))
