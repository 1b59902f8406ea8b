"""Training one ensemble member: data loading, loss, sampling, augmentation, schedule, AMP, DDP.

Everything a member needs to continue after an interruption is in ``last.pt`` (weights,
optimizer, scheduler, every RNG state, the early-stopping state), written atomically after each
epoch, so ``--resume`` ends exactly where an uninterrupted run with the same seed ends. It holds
tensors, containers and plain numbers only and is read with ``torch.load(weights_only=True)``:
a ``last.pt`` from elsewhere cannot run code when resumed.

Multi-GPU (or multi-process CPU) training goes through torch's own engine: launch with
``torchrun --nproc_per_node N -m edgederm train RECIPE``; each process trains on its shard of the
data (``DistributedSampler``), DDP averages gradients, rank 0 alone writes files.
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
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ..data.records import DatasetIndex
from ..data.torchdata import ImageDataset
from ..errors import EdgedermError
from ..fsutil import atomic_path
from ..metrics import classification_report
from ..models import create_model, get_model_spec
from ..preprocess import PreprocessSpec
from .augment import TierConfig, assign_tiers, basic_augment, build_class_augment
from .config import MemberConfig, TrainConfig
from .losses import build_loss, class_weights
from .sampling import balanced_sampler, describe_sampling, oversample_indices

log = logging.getLogger(__name__)

EpochCallback = Callable[[str, dict[str, Any]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- devices and processes ----------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgedermError("device: cuda was asked for, but torch sees no CUDA GPU (use device: auto or cpu)")
    return torch.device(name)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun set up (env:// rendezvous); False when not launched so."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def member_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# -- initialisation -------------------------------------------------------------------------------
def build_member_model(mcfg: MemberConfig, num_classes: int) -> nn.Module:
    """Build the member with explicit initialisation (never a silent random start)."""
    spec = get_model_spec(mcfg.model)
    has_weights = spec.pretrained_source != "none"
    if has_weights and not (mcfg.pretrained or mcfg.weights or mcfg.from_scratch):
        raise EdgedermError(
            f"{mcfg.model}: say how to initialise it: pretrained: true ({spec.pretrained_source} weights), "
            "weights: PATH (a local state dict), or from_scratch: true"
        )
    if mcfg.pretrained and not has_weights:
        raise EdgedermError(f"{mcfg.model} has no pretrained weights; use from_scratch: true")
    return create_model(mcfg.model, num_classes, pretrained=mcfg.pretrained, weights=mcfg.weights, **mcfg.kwargs)


def member_spec(mcfg: MemberConfig) -> PreprocessSpec:
    """The member's preprocessing: its input size, and the normalisation its weights expect."""
    return get_model_spec(mcfg.model).preprocess_spec(mcfg.input_size)


# -- one member -----------------------------------------------------------------------------------
def _predict(model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, ys = [], []
    with torch.inference_mode():
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            probs.append(torch.softmax(model(x).float(), 1).cpu().numpy())
            ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(probs)


def _scheduler(opt: torch.optim.Optimizer, mcfg: MemberConfig, steps: int) -> Any:
    if mcfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=mcfg.lr, total_steps=steps, pct_start=mcfg.warmup)
    if mcfg.schedule == "cosine":
        warm = max(1, int(mcfg.warmup * steps))

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        return torch.optim.lr_scheduler.LambdaLR(opt, f)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.3, patience=1)


def _augmentation(cfg: TrainConfig, spec: PreprocessSpec, train: DatasetIndex) -> tuple[Any, dict[str, str] | None]:
    size = spec.input_size[0]
    if cfg.augment == "basic":
        return basic_augment(size), None
    tier_cfg = TierConfig.from_dict(cfg.tiers or {})
    counts = train.class_counts()
    tiers = assign_tiers(counts, train.classes, tier_cfg)
    # The eval spec frames the tiers without a random crop exactly as evaluation does.
    return build_class_augment(size, train.classes, tiers, tier_cfg, spec=spec), tiers


def _numpy_rng_state() -> list[Any]:
    """NumPy's global RNG state as plain Python values (its key array as a list of ints), so that
    last.pt loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _numpy_array_globals() -> list[Any]:
    """What unpickling a NumPy array needs: the resume states written before they were plain
    values kept NumPy's RNG key array (uint32) in that form."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_resume_state(path: Path) -> dict[str, Any]:
    """``last.pt`` through ``torch.load(weights_only=True)``: tensors, containers and numbers only.

    A state written by an older edgederm (a NumPy array inside) loads with exactly the NumPy array
    types allowed; a file needing anything else (a pickle that would call code) is refused
    with one line, and nothing in it is run.
    """
    import pickle

    redo = f"restart without --resume (or delete {path})"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise EdgedermError(f"{path}: unreadable training state ({type(e).__name__}); {redo}") from None
    try:
        needs = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
    except Exception as e:  # noqa: BLE001 (not even a torch file)
        raise EdgedermError(f"{path}: unreadable training state ({type(e).__name__}); {redo}") from None
    allowed = _numpy_array_globals()
    names = {f"{g.__module__}.{g.__qualname__}" for g in allowed} | {"numpy.core.multiarray._reconstruct", "numpy.dtype"}
    if needs and set(needs) <= names:
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                pass
    raise EdgedermError(f"{path} is not a training state edgederm wrote: loading it would call {', '.join(needs)} "
                        f"(refused, nothing was run); {redo}")


def train_member(
    cfg: TrainConfig,
    mcfg: MemberConfig,
    slot: int,
    splits: dict[str, DatasetIndex],
    *,
    mdir: Path,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
    wrap_train: Callable[[Dataset], Dataset] | None = None,
    make_loss: Callable[[torch.Tensor | None], nn.Module] | None = None,
) -> tuple[nn.Module, PreprocessSpec, dict[str, Any]]:
    """Train one member; returns the best-validation-BACC model (on CPU), its spec and its state.

    Hooks for other objectives (e.g. distillation): ``wrap_train`` wraps the training
    ``ImageDataset`` (items ``(x, y, *extra)``: every extra tensor is moved to the device and
    passed on to the loss); ``make_loss`` builds the criterion from the class weights the recipe
    implies (``None`` when unweighted) and is called ``loss(logits, y, *extra)``.
    """
    rank, world_size = world()
    device = member_device(resolve_device(cfg.device))
    classes = splits["train"].classes
    spec = member_spec(mcfg)
    mdir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed + slot)

    model = build_member_model(mcfg, len(classes)).to(device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if device.type == "cuda" else None
    if cfg.amp != "off" and device.type != "cuda":
        log.warning("amp=%s is for CUDA; training in FP32 on %s", cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    augment, tiers = _augmentation(cfg, spec, splits["train"])
    pre = None
    if cfg.segment:
        from ..seg.apply import segmenter_card_entry, segmenter_from_card_entry

        pre = segmenter_from_card_entry(segmenter_card_entry(cfg.segment))
    train_ds = ImageDataset(splits["train"], spec, augment=augment, cache=cfg.cache_images, pre=pre)
    val_ds = ImageDataset(splits["val"], spec, cache=cfg.cache_images, pre=pre)
    gen = torch.Generator().manual_seed(cfg.seed + slot)
    targets = train_ds.targets
    sampling: dict[str, Any] = {"sampler": cfg.sampler}
    dataset: Any = train_ds if wrap_train is None else wrap_train(train_ds)
    sampler: Any = None
    if cfg.sampler == "oversample":
        idx = oversample_indices(targets, seed=cfg.seed + slot)
        sampling.update(describe_sampling(targets, idx, classes=classes))
        dataset = Subset(dataset, idx)
    if world_size > 1:
        if cfg.sampler == "balanced":
            raise EdgedermError("sampler: balanced cannot shard across processes; use sampler: oversample with torchrun")
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed + slot, drop_last=True)
    elif cfg.sampler == "balanced":
        sampler = balanced_sampler(targets, generator=gen)
    loader_kw: dict[str, Any] = {"batch_size": mcfg.batch_size, "drop_last": True, "num_workers": cfg.workers, "pin_memory": device.type == "cuda"}
    if sampler is not None:
        train_loader = DataLoader(dataset, sampler=sampler, **loader_kw)
    else:
        train_loader = DataLoader(dataset, shuffle=True, generator=gen, **loader_kw)
    if len(train_loader) == 0:
        raise EdgedermError(f"{mcfg.model}: {len(dataset)} training images make no full batch of {mcfg.batch_size}; lower batch_size")
    val_loader = DataLoader(val_ds, batch_size=mcfg.batch_size * 2, num_workers=cfg.workers)

    # Resampling already balances classes; weighting the loss as well would correct twice.
    weight = None
    if cfg.class_weights and cfg.sampler == "shuffle":
        scheme = cfg.class_weights if isinstance(cfg.class_weights, str) else "inverse"
        weight = class_weights(targets, len(classes), scheme=scheme).to(device)
    if make_loss is not None:
        loss_fn = make_loss(weight)
    else:
        loss_fn = build_loss(mcfg.loss, gamma=mcfg.gamma, class_weight=weight, label_smoothing=mcfg.label_smoothing)

    net: nn.Module = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=mcfg.lr, weight_decay=mcfg.weight_decay)
    sched = _scheduler(opt, mcfg, max(1, mcfg.epochs * len(train_loader)))
    per_step = mcfg.schedule != "plateau"

    state: dict[str, Any] = {"epoch": 0, "best_bacc": -1.0, "best_epoch": -1, "history": [], "stale": 0}
    last = mdir / "last.pt"
    if resume and last.exists():
        saved = load_resume_state(last)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        gen.set_state(saved["gen_rng"])
        np.random.set_state(tuple(saved["np_rng"]))
        random.setstate(saved["py_rng"])
        state = saved["state"]
        log.info("%s: resumed after epoch %d", mcfg.model, state["epoch"])

    while state["epoch"] < mcfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        total, n = 0.0, 0
        bar = tqdm(train_loader, desc=f"{mcfg.model} epoch {epoch + 1}/{mcfg.epochs}", leave=False, disable=None if rank == 0 else True)
        for x, y, *extra in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            extra = [e.to(device, non_blocking=True) for e in extra]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = loss_fn(net(x).float(), y, *extra)
            if not torch.isfinite(loss):
                raise EdgedermError(
                    f"{mcfg.model}: loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate ({mcfg.lr})"
                )
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if per_step:
                sched.step()
            total += loss.item() * len(y)
            n += len(y)
            bar.set_postfix(loss=f"{total / n:.3f}")
        train_seconds = time.perf_counter() - t0  # the optimisation steps alone, loading included
        y_val, p_val = _predict(model, val_loader, device, channels_last)
        bacc = float(classification_report(y_val, p_val, classes)["bacc"])
        if not per_step:
            sched.step(bacc)
        seconds = time.perf_counter() - t0
        state["history"].append(
            {"epoch": epoch + 1, "loss": total / max(n, 1), "val_bacc": bacc, "seconds": seconds,
             "lr": opt.param_groups[0]["lr"], "steps": len(train_loader), "world_size": world_size,
             "train_images_per_s": n * world_size / max(train_seconds, 1e-9)}
        )
        if rank == 0:
            log.info("%s epoch %d: loss %.4f, val BACC %.4f (%.1fs; training %.0f images/s)", mcfg.model, epoch + 1,
                     total / max(n, 1), bacc, seconds, state["history"][-1]["train_images_per_s"])
        state["epoch"] = epoch + 1
        improved = bacc > state["best_bacc"]
        if improved:
            state.update(best_bacc=bacc, best_epoch=epoch + 1, stale=0)
        else:
            state["stale"] += 1
        if rank == 0:
            if improved:
                with atomic_path(mdir / "best.pt") as tmp:
                    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
            with atomic_path(last) as tmp:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "sched": sched.state_dict(),
                        "scaler": scaler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "gen_rng": gen.get_state(),
                        "np_rng": _numpy_rng_state(),
                        "py_rng": random.getstate(),
                        "state": state,
                    },
                    tmp,
                )
        if world_size > 1:
            dist.barrier()  # every rank sees rank 0's files before going on
        if on_epoch_end is not None:
            on_epoch_end(mcfg.model, state)
    state["tiers"] = tiers
    state["sampling"] = sampling
    model = model.cpu()
    if channels_last:
        model = model.to(memory_format=torch.contiguous_format)
    model.load_state_dict(torch.load(mdir / "best.pt", map_location="cpu", weights_only=True))
    return model.eval(), spec, state
