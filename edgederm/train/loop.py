"""The training loop: recipe → split → train members → ensemble checkpoint + card → evaluation.

Run folder layout (``<out>/<name>/``)::

    recipe.yaml        the resolved recipe
    split.csv          the lesion-grouped split (reused by later stages and re-runs)
    members/<i>-<model>/last.pt   per-epoch training state (for --resume), written atomically
    members/<i>-<model>/best.pt   weights of the best validation-BACC epoch
    model.pt           the ensemble checkpoint with its card (+ model.pt.card.json)
    metrics.json       val and test metrics with lesion-level bootstrap CIs
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm

from ..card import ArtifactCard, provenance
from ..checkpoint import Member, member_from_model, save_checkpoint
from ..data.images import load_image
from ..data.leakage import check_leakage
from ..data.readers import read_dataset
from ..data.records import DatasetIndex, Skipped
from ..data.splits import apply_split, make_splits, read_split_csv, write_split_csv
from ..data.torchdata import ImageDataset
from ..errors import DataError, EdgedermError, ImageError
from ..fsutil import atomic_path, sha256_file, write_json_atomic, write_text_atomic
from ..metrics import classification_report
from ..models import create_model, get_model_spec
from ..preprocess import PreprocessSpec, spec_for_size
from .config import MemberConfig, TrainConfig

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- data ---------------------------------------------------------------------------------------
def drop_unreadable(index: DatasetIndex) -> DatasetIndex:
    """Decode every image once; unreadable ones are dropped into ``skipped`` (and counted)."""
    keep: list[int] = []
    for i, r in enumerate(index.records):
        try:
            load_image(r.ref, draft_size=256)
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


def prepare_data(cfg: TrainConfig) -> tuple[DatasetIndex, dict[str, DatasetIndex], Path]:
    """Read the data, make or reuse the lesion-grouped split, verify nothing leaks."""
    if cfg.synthetic is not None and not Path(cfg.data).joinpath("HAM10000_metadata.csv").exists():
        from ..data.synthetic import generate

        log.info("generating the synthetic data set into %s", cfg.data)
        generate(cfg.data, **cfg.synthetic)
    index = read_dataset(cfg.data, cfg.format, taxonomy=cfg.taxonomy)
    index = drop_unreadable(index)
    run_dir = cfg.run_dir
    split_path = Path(cfg.split_file) if cfg.split_file else run_dir / "split.csv"
    if split_path.exists():
        assignment = read_split_csv(split_path, index)
        log.info("reusing split %s", split_path)
    else:
        assignment = make_splits(index, val=cfg.val, test=cfg.test, seed=cfg.seed)
        write_split_csv(split_path, index, assignment, seed=cfg.seed)
    report = check_leakage(index, assignment, near_duplicates=False)
    if not report.ok:
        raise DataError(f"split {split_path} leaks: {report.format().splitlines()[0]}")
    splits = apply_split(index, assignment)
    for name in ("train", "val", "test"):
        if name not in splits or len(splits[name]) == 0:
            raise DataError(f"split {name!r} is empty; the data set is too small for val={cfg.val}, test={cfg.test}")
    return index, splits, split_path


def augmentation(size: int) -> Any:
    """Dermoscopy is orientation-free: flips, any rotation, scale and mild colour changes."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.85, 1.18)),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomApply([T.RandomRotation(180)], p=0.5),
            T.ColorJitter(0.15, 0.15, 0.1, 0.02),
        ]
    )


def class_weights(targets: list[int], n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (absent classes get weight 0)."""
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    w = w / w[counts > 0].mean()
    return torch.tensor(w, dtype=torch.float32)


# -- one member ---------------------------------------------------------------------------------
def _predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, ys = [], []
    with torch.inference_mode():
        for x, y in loader:
            probs.append(torch.softmax(model(x).float(), 1).numpy())
            ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(probs)


def train_member(
    cfg: TrainConfig,
    mcfg: MemberConfig,
    slot: int,
    splits: dict[str, DatasetIndex],
    *,
    resume: bool = False,
    on_epoch_end: Callable[[str, dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, PreprocessSpec, dict[str, Any]]:
    classes = splits["train"].classes
    spec_info = get_model_spec(mcfg.model)
    size = mcfg.input_size or spec_info.input_size
    spec = spec_for_size(size)
    mdir = cfg.run_dir / "members" / f"{slot}-{mcfg.model}"
    mdir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed + slot)

    model = create_model(mcfg.model, len(classes), pretrained=mcfg.pretrained, weights=mcfg.weights, **mcfg.kwargs)
    train_ds = ImageDataset(splits["train"], spec, augment=augmentation(size), cache=cfg.cache_images)
    val_ds = ImageDataset(splits["val"], spec, cache=cfg.cache_images)
    gen = torch.Generator().manual_seed(cfg.seed + slot)
    if cfg.balanced_sampler:
        counts = np.bincount(train_ds.targets, minlength=len(classes))
        sample_w = [1.0 / counts[t] for t in train_ds.targets]
        sampler = WeightedRandomSampler(sample_w, num_samples=len(sample_w), replacement=True, generator=gen)
        train_loader = DataLoader(train_ds, batch_size=mcfg.batch_size, sampler=sampler, drop_last=True)
    else:
        train_loader = DataLoader(train_ds, batch_size=mcfg.batch_size, shuffle=True, generator=gen, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=mcfg.batch_size * 2)

    weight = class_weights(train_ds.targets, len(classes)) if cfg.class_weights and not cfg.balanced_sampler else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.AdamW(model.parameters(), lr=mcfg.lr, weight_decay=mcfg.weight_decay)
    steps = max(1, mcfg.epochs * len(train_loader))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=mcfg.lr, total_steps=steps, pct_start=0.15)

    state: dict[str, Any] = {"epoch": 0, "best_bacc": -1.0, "best_epoch": -1, "history": [], "stale": 0}
    last = mdir / "last.pt"
    if resume and last.exists():
        saved = torch.load(last, map_location="cpu", weights_only=False)  # our own file: holds RNG states
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        torch.set_rng_state(saved["torch_rng"])
        gen.set_state(saved["gen_rng"])
        np.random.set_state(saved["np_rng"])
        random.setstate(saved["py_rng"])
        state = saved["state"]
        log.info("%s: resumed after epoch %d", mcfg.model, state["epoch"])

    while state["epoch"] < mcfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        model.train()
        t0 = time.perf_counter()
        total, n = 0.0, 0
        bar = tqdm(train_loader, desc=f"{mcfg.model} epoch {epoch + 1}/{mcfg.epochs}", leave=False, disable=None)
        for x, y in bar:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise EdgedermError(f"{mcfg.model}: loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate ({mcfg.lr})")
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            n += len(y)
            bar.set_postfix(loss=f"{total / n:.3f}")
        y_val, p_val = _predict(model, val_loader)
        bacc = float(classification_report(y_val, p_val, classes)["bacc"])
        state["history"].append({"epoch": epoch + 1, "loss": total / max(n, 1), "val_bacc": bacc, "seconds": time.perf_counter() - t0})
        log.info("%s epoch %d: loss %.4f, val BACC %.4f (%.1fs)", mcfg.model, epoch + 1, total / max(n, 1), bacc, time.perf_counter() - t0)
        state["epoch"] = epoch + 1
        if bacc > state["best_bacc"]:
            state.update(best_bacc=bacc, best_epoch=epoch + 1, stale=0)
            with atomic_path(mdir / "best.pt") as tmp:
                torch.save(model.state_dict(), tmp)
        else:
            state["stale"] += 1
        with atomic_path(last) as tmp:
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "gen_rng": gen.get_state(),
                    "np_rng": np.random.get_state(),
                    "py_rng": random.getstate(),
                    "state": state,
                },
                tmp,
            )
        if on_epoch_end is not None:
            on_epoch_end(mcfg.model, state)
    model.load_state_dict(torch.load(mdir / "best.pt", map_location="cpu", weights_only=True))
    return model.eval(), spec, state


# -- the whole run ------------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[str, dict[str, Any]], None] | None = None,
) -> Path:
    """Train every member, write the ensemble checkpoint + card, evaluate val/test with CIs.

    ``on_epoch_end(model_name, state)`` is called after each epoch's checkpoint is on disk.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = cfg.run_dir
    if run_dir.joinpath("model.pt").exists() and not resume:
        raise EdgedermError(f"{run_dir} already holds a finished run; choose another name or --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    t_start = time.perf_counter()
    index, splits, split_path = prepare_data(cfg)
    log.info("data %s: %s", index.name, {k: len(v) for k, v in splits.items()})

    members: list[Member] = []
    infos: list[dict[str, Any]] = []
    for slot, mcfg in enumerate(cfg.members):
        model, spec, state = train_member(cfg, mcfg, slot, splits, resume=resume, on_epoch_end=on_epoch_end)
        members.append(member_from_model(mcfg.model, model, len(index.classes), **mcfg.kwargs))
        infos.append({"name": mcfg.model, "val_bacc": state["best_bacc"], "best_epoch": state["best_epoch"], "preprocessing": spec.to_dict(), "history": state["history"]})

    # The seeds' rule: members weighted by validation BACC.
    total = sum(max(i["val_bacc"], 1e-6) for i in infos)
    for info in infos:
        info["weight"] = max(info["val_bacc"], 1e-6) / total
    card = ArtifactCard(
        name=cfg.name,
        classes=list(index.classes),
        taxonomy=cfg.taxonomy or index.taxonomy,
        preprocessing=PreprocessSpec.from_dict(infos[0]["preprocessing"]),
        model={
            "kind": "ensemble" if len(infos) > 1 else "single",
            "combine": "weighted_mean",
            "output": "logits",
            "members": [{k: v for k, v in i.items() if k != "history"} for i in infos],
        },
        tta={"views": list(cfg.tta)},
        data={
            "dataset": index.name,
            "root": str(Path(cfg.data).resolve()),
            "fingerprint": index.fingerprint(),
            "split_file": str(split_path.resolve()),
            "split_sha256": sha256_file(split_path),
            "counts": {k: len(v) for k, v in splits.items()},
            "skipped": len(index.skipped),
        },
        provenance=provenance(command=os.environ.get("EDGEDERM_COMMAND")),
    )
    # Score through the runtime, exactly as every exported artifact will be scored. The
    # checkpoint is scored under a temporary name: model.pt appears only once the run is done.
    from ..card import sidecar_path
    from ..evaluate import evaluate
    from ..runtime import load

    unscored = run_dir / ".model.unscored.pt"
    save_checkpoint(unscored, members, card)
    predictor = load(unscored)
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        result = evaluate(predictor, splits[split], n_boot=cfg.n_boot, seed=cfg.seed)
        metrics[split] = result.summary()
    metrics["train_seconds"] = time.perf_counter() - t_start
    card.metrics = {s: {"n": metrics[s]["n"], **metrics[s]["ci"]} for s in ("val", "test")}
    ckpt = run_dir / "model.pt"
    save_checkpoint(ckpt, members, card)
    unscored.unlink()
    sidecar_path(unscored).unlink()
    write_json_atomic(run_dir / "metrics.json", metrics)
    log.info("run finished in %.0fs: %s", metrics["train_seconds"], run_dir)
    return run_dir
