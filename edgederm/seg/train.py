"""Train an Attention U-Net lesion segmenter on a data set with lesion masks (PH2) and score it.

Run folder layout (``<out>/<name>/``)::

    recipe.yaml     the resolved SegConfig
    split.csv       the train/val/test split by image (reused when the run is repeated)
    best.pt         state dict of the best validation-Dice epoch so far (written atomically)
    model.pt        the segmentation checkpoint + card (task "segmentation"), + model.pt.card.json
    metrics.json    held-out test IoU / Dice (mean per image, bootstrap 95% CI over images) for the
                    model and two trivial baselines, the paired difference to the stronger
                    baseline, per-image scores, the training history and wall times
    overlays.png    test images | true contour | predicted contour, spread from worst to best Dice

Test scores are computed at each image's original resolution: the predicted logits are resized
back to the image (bilinear) before thresholding, so a coarse network output is not flattered by
comparing it with a downsampled ground truth.

Command line: ``python -m edgederm.seg train/ph2-attention-unet.yaml --out runs``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..card import ArtifactCard, provenance
from ..checkpoint import member_from_model, save_checkpoint
from ..data.readers import read_dataset
from ..data.records import DatasetIndex
from ..data.splits import apply_split, make_splits, read_split_csv, write_split_csv
from ..errors import DataError, EdgedermError
from ..fsutil import atomic_path, sha256_file, write_json_atomic, write_text_atomic
from ..metrics import format_ci_entry
from ..provenance import command
from .data import SegDataset, load_mask, load_pair, seg_spec
from .infer import MODEL_NAME, load_segmenter, predict_mask  # noqa: F401  (public here too)
from .unet import AttentionUNet

log = logging.getLogger(__name__)

CLASSES = ["lesion"]

__all__ = [
    "SegConfig",
    "load_seg_recipe",
    "train_segmenter",
    "load_segmenter",
    "predict_mask",
    "mask_scores",
    "bootstrap_mean_ci",
    "ellipse_mask",
    "overlay_grid",
]


# ------------------------------------------------------------------------------------- config

@dataclass
class SegConfig:
    """A segmentation recipe (``train/ph2-attention-unet.yaml``)."""

    data: str
    name: str = "ph2-attention-unet"
    format: str = "ph2"
    taxonomy: str | None = None  # None: the reader's default (PH2: ph2_3, used to stratify the split)
    size: int = 128  # square network input; must be divisible by 2**depth
    base: int = 16  # width of the first level; level i has base * 2**i channels
    depth: int = 4
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to lr / 100
    dice_weight: float = 1.0  # loss = BCE + dice_weight * (1 - soft Dice)
    patience: int | None = None  # stop after this many epochs without a better val Dice
    seed: int = 42
    val: float = 0.15
    test: float = 0.2
    split_file: str | None = None  # default: <run dir>/split.csv (made if absent, reused if present)
    max_train: int | None = None  # use only this many training images (quick experiments, tests)
    out: str = "runs"
    threads: int | None = None
    n_boot: int = 1000
    n_overlay: int = 8

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        if self.size < 1 or self.size % (2**self.depth):
            raise EdgedermError(f"size {self.size} must be a positive multiple of 2**depth = {2**self.depth}")
        for key in ("epochs", "batch_size", "base", "depth", "n_boot"):
            if int(getattr(self, key)) < 1:
                raise EdgedermError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_train is not None and self.max_train < 1:
            raise EdgedermError(f"max_train must be >= 1, got {self.max_train}")


def load_seg_recipe(path: str | Path, **overrides: Any) -> SegConfig:
    """Parse a segmentation recipe; ``overrides`` (not None) replace its keys.

    Unknown keys are refused (a typo must not silently fall back to a default); ``$VARS`` in
    ``data``, ``out`` and ``split_file`` are expanded from the environment.
    """
    from ..train.config import read_recipe_yaml

    p = Path(path)
    raw = read_recipe_yaml(p, overrides)
    names = {f.name for f in fields(SegConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise EdgedermError(f"{p}: unknown keys {unknown}; allowed: {sorted(names)}")
    if "data" not in raw:
        raise EdgedermError(f"{p}: missing required key 'data'")
    try:
        cfg = SegConfig(**raw)
    except TypeError as e:
        raise EdgedermError(f"{p}: {e}") from None
    for key in ("data", "out", "split_file"):
        value = getattr(cfg, key)
        if value:
            value = os.path.expandvars(str(value))
            if "$" in value:
                raise EdgedermError(f"{p}: {key} {value!r} names an environment variable that is not set")
            setattr(cfg, key, value)
    cfg.check()
    return cfg


# ------------------------------------------------------------------------------------ metrics

def mask_scores(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(IoU, Dice) of two boolean masks of one image; both empty counts as a perfect 1.0."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {true.shape}")
    inter = float(np.logical_and(pred, true).sum())
    total = float(pred.sum() + true.sum())
    if total == 0:
        return 1.0, 1.0
    return inter / (total - inter), 2.0 * inter / total


def bootstrap_mean_ci(
    values: Sequence[float], *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Mean of per-image values with a percentile bootstrap CI over images (each PH2 image is its
    own lesion, so images are the independent unit). Same keys as ``metrics.bootstrap_ci``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to summarise")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(int(n_boot), v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"value": float(v.mean()), "lo": float(lo), "hi": float(hi), "n_used": int(n_boot), "level": 1 - alpha, "n": int(v.size)}


def ellipse_mask(shape: tuple[int, int], scale: float) -> np.ndarray:
    """A centred axis-aligned ellipse with semi-axes ``scale`` x half the image's sides."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = max(scale * h / 2, 0.5), max(scale * w / 2, 0.5)
    return ((yy + 0.5 - h / 2) / ry) ** 2 + ((xx + 0.5 - w / 2) / rx) ** 2 <= 1.0


def fit_ellipse_scale(masks: Sequence[np.ndarray], grid: Sequence[float] | None = None) -> float:
    """The ellipse scale with the best mean Dice on ``masks`` (the training masks): the baseline
    gets to learn PH2's typical lesion size, which is all a trivial predictor can know."""
    grid = list(grid) if grid is not None else [round(s, 3) for s in np.arange(0.30, 1.001, 0.05)]
    best, best_dice = grid[0], -1.0
    for s in grid:
        d = float(np.mean([mask_scores(ellipse_mask(m.shape, s), m)[1] for m in masks]))
        if d > best_dice + 1e-12:
            best, best_dice = s, d
    return float(best)


def _summary(ious: list[float], dices: list[float], n_boot: int, seed: int) -> dict[str, Any]:
    return {"iou": bootstrap_mean_ci(ious, n_boot=n_boot, seed=seed), "dice": bootstrap_mean_ci(dices, n_boot=n_boot, seed=seed)}


# ---------------------------------------------------------------------------------- inference

# ----------------------------------------------------------------------------------- training

def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, per image then averaged (so small lesions weigh as much as large ones)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1.0 - (2.0 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def _prepare_split(cfg: SegConfig) -> tuple[DatasetIndex, dict[str, DatasetIndex], Path]:
    index = read_dataset(cfg.data, cfg.format, taxonomy=cfg.taxonomy)
    no_mask = [r.image_id for r in index.records if not r.mask_ref]
    if no_mask:
        raise DataError(f"{len(no_mask)} images of {index.name!r} have no lesion mask (e.g. {no_mask[0]}); segmentation needs masks")
    split_path = Path(cfg.split_file) if cfg.split_file else cfg.run_dir / "split.csv"
    if split_path.exists():
        assignment = read_split_csv(split_path, index)
        log.info("reusing split %s", split_path)
    else:
        # PH2 records carry no lesion id, so each image is its own group: a split by image.
        assignment = make_splits(index, val=cfg.val, test=cfg.test, seed=cfg.seed)
        write_split_csv(split_path, index, assignment, seed=cfg.seed, extra_meta={"task": "segmentation"})
    splits = apply_split(index, assignment)
    for name in ("train", "val", "test"):
        if len(splits[name]) == 0:
            raise DataError(f"split {name!r} is empty; the data set is too small for val={cfg.val}, test={cfg.test}")
    if cfg.max_train is not None and cfg.max_train < len(splits["train"]):
        rng = np.random.default_rng(cfg.seed)
        keep = sorted(rng.choice(len(splits["train"]), size=cfg.max_train, replace=False).tolist())
        splits["train"] = splits["train"].subset(keep)
    return index, splits, split_path


def _val_scores(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Mean per-image (Dice, IoU) at the network resolution (model selection only)."""
    model.eval()
    dices, ious = [], []
    with torch.inference_mode():
        for x, m in loader:
            pred = (model(x) >= 0).flatten(1)
            t = m.bool().flatten(1)
            inter = (pred & t).sum(1).double()
            total = pred.sum(1).double() + t.sum(1).double()
            dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
            iou = torch.where(total > 0, inter / (total - inter).clamp(min=1), torch.ones_like(total))
            dices += dice.tolist()
            ious += iou.tolist()
    return float(np.mean(dices)), float(np.mean(ious))


def _lr_lambda(total_steps: int, warmup_steps: int):  # noqa: ANN202 - closure for LambdaLR
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def train_segmenter(cfg: SegConfig) -> dict[str, Any]:
    """Split, train (BCE + Dice, AdamW, best val-Dice epoch kept), checkpoint, score the test set.

    Returns the ``metrics.json`` content plus ``run_dir``, ``checkpoint``, ``overlay``, ``split_file``.
    """
    cfg.check()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _train_segmenter(cfg)
    finally:
        torch.set_num_threads(threads)  # a library call must not leave the process's setting changed


def _train_segmenter(cfg: SegConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    run_dir = cfg.run_dir
    ckpt_path = run_dir / "model.pt"
    if ckpt_path.exists():
        raise EdgedermError(f"{run_dir} already holds a finished run; choose another name or out folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _seed_all(cfg.seed)

    index, splits, split_path = _prepare_split(cfg)
    counts = {k: len(v) for k, v in splits.items()}
    log.info("segmentation data %s: %s", index.name, counts)
    train_ds = SegDataset(splits["train"].records, cfg.size, augment=True)
    val_ds = SegDataset(splits["val"].records, cfg.size, augment=False)
    g = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=g,
                              drop_last=len(train_ds) > cfg.batch_size)
    val_loader = DataLoader(val_ds, batch_size=max(cfg.batch_size, 32), shuffle=False)

    model = AttentionUNet(in_ch=3, out_ch=1, base=cfg.base, depth=cfg.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, round(cfg.warmup_epochs * len(train_loader))))
    bce = nn.BCEWithLogitsLoss()

    best_dice, best_epoch, best_state = -1.0, -1, None
    history: list[dict[str, Any]] = []
    t_train = time.perf_counter()
    for epoch in range(cfg.epochs):
        te = time.perf_counter()
        model.train()
        losses = []
        bar = tqdm(train_loader, desc=f"seg epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
        for x, m in bar:
            logits = model(x)
            loss = bce(logits, m) + cfg.dice_weight * dice_loss(logits, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        val_dice, val_iou = _val_scores(model, val_loader)
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_dice": val_dice, "val_iou": val_iou,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - te}
        history.append(row)
        log.info("epoch %d/%d loss %.4f val Dice %.4f IoU %.4f (%.1fs)", epoch + 1, cfg.epochs, row["loss"], val_dice, val_iou, row["seconds"])
        if val_dice > best_dice:
            best_dice, best_epoch = val_dice, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            with atomic_path(run_dir / "best.pt") as tmp:
                torch.save(best_state, tmp)
        elif cfg.patience is not None and epoch + 1 - best_epoch >= cfg.patience:
            log.info("no better val Dice for %d epochs: stopping", cfg.patience)
            break
    train_seconds = time.perf_counter() - t_train
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()

    # -- held-out test, at original resolution ---------------------------------------------
    train_masks = [load_mask(r.mask_ref) for r in splits["train"].records if r.mask_ref]
    scale = fit_ellipse_scale(train_masks)
    per_image: list[dict[str, Any]] = []
    scores: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ("model", "all_foreground", "centred_ellipse")}
    shown: list[tuple[Image.Image, np.ndarray, np.ndarray, str]] = []
    for rec in tqdm(splits["test"].records, desc="seg test", leave=False, disable=None):
        img, true = load_pair(rec)
        pred = predict_mask(model, img, cfg.size)
        preds = {"model": pred, "all_foreground": np.ones_like(true), "centred_ellipse": ellipse_mask(true.shape, scale)}
        row: dict[str, Any] = {"image_id": rec.image_id, "label": rec.label}
        for key, p in preds.items():
            iou, dice = mask_scores(p, true)
            scores[key][0].append(iou)
            scores[key][1].append(dice)
            if key == "model":
                row.update(iou=iou, dice=dice)
        per_image.append(row)
        shown.append((img, true, pred, rec.image_id))
    test = {
        "n": len(per_image),
        "resolution": "original",
        "model": _summary(*scores["model"], cfg.n_boot, cfg.seed),
        "baselines": {
            "all_foreground": _summary(*scores["all_foreground"], cfg.n_boot, cfg.seed),
            "centred_ellipse": {**_summary(*scores["centred_ellipse"], cfg.n_boot, cfg.seed), "scale": scale,
                                "note": "scale fitted on the training masks"},
        },
        # Paired over the same images: is the model better than the trivial answer, and by how much?
        "model_minus_ellipse": {
            k: bootstrap_mean_ci(np.subtract(scores["model"][i], scores["centred_ellipse"][i]), n_boot=cfg.n_boot, seed=cfg.seed)
            for i, k in enumerate(("iou", "dice"))
        },
        # Per diagnosis (PH2: nevi vs melanomas) to see whether the harder lesions are segmented worse.
        "by_label": {
            lab: {"n": len(rows), "dice": float(np.mean([r["dice"] for r in rows])), "iou": float(np.mean([r["iou"] for r in rows]))}
            for lab in index.classes
            if (rows := [r for r in per_image if r["label"] == lab])
        },
        "per_image": per_image,
    }

    overlay_path = run_dir / "overlays.png"
    order = np.argsort([r["dice"] for r in per_image], kind="stable")
    pick = sorted({int(order[round(q)]) for q in np.linspace(0, len(order) - 1, min(cfg.n_overlay, len(order)))},
                  key=lambda i: per_image[i]["dice"])
    rows = [(shown[i][0], shown[i][1], shown[i][2], f"{shown[i][3]} Dice {per_image[i]['dice']:.3f}") for i in pick]
    grid = overlay_grid(rows)
    with atomic_path(overlay_path) as tmp:
        grid.save(tmp, format="PNG")

    # -- checkpoint + card ---------------------------------------------------------------------
    kwargs = {"in_ch": 3, "base": cfg.base, "depth": cfg.depth}
    member = member_from_model(MODEL_NAME, model, 1, **kwargs)
    card = ArtifactCard(
        name=cfg.name,
        classes=list(CLASSES),
        task="segmentation",
        taxonomy="",
        preprocessing=seg_spec(cfg.size),
        model={
            "kind": "single",
            "output": "logits",
            "activation": "sigmoid",
            "members": [{"name": MODEL_NAME, "weight": 1.0, "input_size": [cfg.size, cfg.size], "out_ch": 1, **kwargs,
                         "best_epoch": best_epoch, "val_dice": best_dice,
                         "params": sum(p.numel() for p in model.parameters())}],
        },
        # One sigmoid output: "argmax" over (background, lesion) is sigmoid(logit) >= 0.5.
        decision={"rule": "argmax", "pixel_threshold": 0.5},
        metrics={"test": {"n": test["n"], "iou": test["model"]["iou"], "dice": test["model"]["dice"],
                          "baselines": test["baselines"], "resolution": "original"},
                 "val": {"n": counts["val"], "dice": best_dice, "resolution": f"{cfg.size}x{cfg.size}"}},
        data={
            "dataset": index.name,
            "root": str(Path(cfg.data).resolve()),
            "fingerprint": index.fingerprint(),
            "split_file": str(split_path.resolve()),
            "split_sha256": sha256_file(split_path),
            "counts": counts,
        },
        provenance=provenance(command=command()),
    )
    save_checkpoint(ckpt_path, [member], card)

    metrics: dict[str, Any] = {
        "task": "segmentation",
        "name": cfg.name,
        "dataset": index.name,
        "fingerprint": index.fingerprint(),
        "counts": counts,
        "size": cfg.size,
        "pixel_threshold": 0.5,
        "val": {"best_epoch": best_epoch, "dice": best_dice, "resolution": f"{cfg.size}x{cfg.size}"},
        "test": test,
        "history": history,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    m = test["model"]
    log.info("test (n=%d): Dice %.3f [%.3f, %.3f], IoU %.3f [%.3f, %.3f]; run %s in %.0fs", test["n"],
             m["dice"]["value"], m["dice"]["lo"], m["dice"]["hi"], m["iou"]["value"], m["iou"]["lo"], m["iou"]["hi"],
             run_dir, metrics["total_seconds"])
    return {**metrics, "run_dir": str(run_dir), "checkpoint": str(ckpt_path), "overlay": str(overlay_path),
            "split_file": str(split_path)}


# ----------------------------------------------------------------------------------- overlays

def _contour(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Boundary pixels of a boolean mask (4-neighbour erosion), thickened to ``width``."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    edge = mask & ~inner
    for _ in range(width - 1):
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge


def overlay_grid(
    rows: Sequence[tuple[Image.Image, np.ndarray, np.ndarray, str]], *, height: int = 160
) -> Image.Image:
    """One row per (image, true mask, predicted mask, caption): image | true contour (green) |
    predicted contour (red, with the true one in thin green for reference)."""
    panels: list[list[Image.Image]] = []
    for img, true, pred, caption in rows:
        w = max(1, round(img.width * height / img.height))
        base = img.convert("RGB").resize((w, height), Image.Resampling.BILINEAR)
        t = np.asarray(Image.fromarray(true.astype(np.uint8) * 255).resize((w, height), Image.Resampling.NEAREST)) > 127
        p = np.asarray(Image.fromarray(pred.astype(np.uint8) * 255).resize((w, height), Image.Resampling.NEAREST)) > 127
        arr = np.asarray(base)
        a_true = arr.copy()
        a_true[_contour(t, 2)] = (0, 255, 0)
        a_pred = arr.copy()
        a_pred[_contour(t, 1)] = (0, 200, 0)
        a_pred[_contour(p, 2)] = (255, 0, 0)
        row = [base, Image.fromarray(a_true), Image.fromarray(a_pred)]
        ImageDraw.Draw(row[0]).text((4, 4), caption, fill=(255, 255, 0))
        panels.append(row)
    if not panels:
        return Image.new("RGB", (1, 1))
    col_w = max(p[0].width for p in panels)
    grid = Image.new("RGB", (3 * col_w + 8, len(panels) * (height + 4)), (32, 32, 32))
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            grid.paste(panel, (c * (col_w + 4), r * (height + 4)))
    return grid


# --------------------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgederm.seg", description="Train a lesion segmenter from a recipe.")
    ap.add_argument("recipe")
    ap.add_argument("--data")
    ap.add_argument("--out")
    ap.add_argument("--name")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_seg_recipe(args.recipe, data=args.data, out=args.out, name=args.name, epochs=args.epochs,
                              size=args.size, threads=args.threads)
        res = train_segmenter(cfg)
    except EdgedermError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    t, b = res["test"], res["test"]["baselines"]

    def fmt(d: dict[str, Any]) -> str:
        return format_ci_entry(d)

    print(f"test n={t['n']}  Dice / IoU (mean per image, 95% CI)")
    print(f"  model            {fmt(t['model']['dice'])}  {fmt(t['model']['iou'])}")
    print(f"  centred ellipse  {fmt(b['centred_ellipse']['dice'])}  {fmt(b['centred_ellipse']['iou'])}")
    print(f"  all foreground   {fmt(b['all_foreground']['dice'])}  {fmt(b['all_foreground']['iou'])}")
    print(f"  model - ellipse  {fmt(t['model_minus_ellipse']['dice'])}  {fmt(t['model_minus_ellipse']['iou'])}")
    print(f"run folder {res['run_dir']}  ({res['total_seconds']:.0f}s, training {res['train_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
