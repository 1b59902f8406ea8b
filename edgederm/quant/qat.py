"""Quantization-aware fine-tuning (QAT) with NNCF's PyTorch flow, distilled from the FP32 model.

Post-training INT8 of a distilled student can flip its close calls: the logit margins are thin
and INT8 noise from the early layers reaches the logits (docs/quantization.md). QAT lets the
weights (and the quantizer scales) move to where the INT8 model reproduces the FP32 one:

1. ``nncf.quantize(copy of the model, calibration)`` — the same PTQ initialisation as NNCF's
   other backends, returning a torch module with fake quantizers in its forward;
2. a few epochs of Adam on train-split images with the FP32 model as the teacher:
   ``KL(softmax(fp32 / T) || softmax(int8 / T)) * T²``; the module stays in eval mode, so BN
   uses its running statistics and dropout / drop-path stay off (the target is the FP32
   *function*, not a new model);
3. the caller converts the fine-tuned module with its runtime's converter (``ov.convert_model``
   turns the fake quantizers into FakeQuantize ops: NNCF's documented export).

NNCF's overflow fix (7-bit weights in the first layer, for x86 CPUs without VNNI) is turned off:
NNCF emulates those weights in 7 bits while training but exports them at 8 bits, so the artifact
would not compute what was fine-tuned (measured on the synthetic student: logit RMS between the
torch model and its OpenVINO IR 0.20 with the fix, 0.13 without). The INT8 targets here are
VNNI / AMX CPUs.

Only train-split images are used (the gate judges on validation); images are decoded and
preprocessed exactly as the runtime does, plus horizontal flips (a dermoscopy image has no
preferred side), and nothing heavier.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import EdgedermError, MissingExtraError
from ..provenance import package_version

if TYPE_CHECKING:
    from torch import nn

    from ..data.records import Record
    from ..export.context import ExportContext

log = logging.getLogger(__name__)

#: Distillation temperature of the QAT loss: soft enough that every logit, not just the top
#: one, is matched (agreement needs the runner-up's logit right too).
TEMPERATURE = 4.0
BATCH = 8
#: Images (the first ones fine-tuned on) on which the torch INT8 model is compared with FP32
#: before and after fine-tuning; recorded in the card.
CHECK_IMAGES = 200
PRESETS = ("performance", "mixed")


def _nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise MissingExtraError("openvino", "nncf", "quantization-aware training") from None
    return nncf


def qat_records(ctx: "ExportContext", n: int, *, seed: int = 2) -> list["Record"]:
    """``n`` train-split records, class-balanced and deterministic (never validation or test)."""
    from ..export.context import balanced_order

    if n < 1:
        raise EdgedermError(f"quantization-aware training needs at least one image, got qat_images={n}")
    recs = balanced_order(ctx.split("train").records, seed=seed)[: int(n)]
    if len(recs) < n:
        log.info("QAT: the train split has %d images (asked for %d)", len(recs), n)
    return recs


def fidelity(model: "nn.Module", reference: "nn.Module", images: np.ndarray, *, batch: int = 32) -> dict[str, float]:
    """Argmax agreement and RMS error of the centred logits (each image's mean subtracted: softmax
    and the distillation loss ignore a common shift) of ``model`` against ``reference``."""
    import torch

    outs, refs = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch])
            outs.append(model(x).float().numpy())
            refs.append(reference(x).float().numpy())
    a, b = np.concatenate(outs), np.concatenate(refs)
    d = (a - a.mean(1, keepdims=True)) - (b - b.mean(1, keepdims=True))
    return {"logit_rms": float(np.sqrt(np.mean(d**2))), "agreement": float(np.mean(a.argmax(1) == b.argmax(1)))}


def quantize_aware(
    model: "nn.Module",
    calibration: Sequence[np.ndarray],
    images: np.ndarray,
    *,
    epochs: int = 2,
    lr: float = 1e-5,
    preset: str = "performance",
    batch: int = BATCH,
    temperature: float = TEMPERATURE,
    hflip: bool = True,
    train_ranges: bool = True,
    seed: int = 0,
) -> tuple["nn.Module", dict[str, Any]]:
    """A fine-tuned fake-quantized copy of ``model`` (left untouched) and what was done.

    ``calibration``: NCHW float32 batches for NNCF's PTQ initialisation; ``images``: the
    (N, 3, H, W) float32 train images to fine-tune on, preprocessed as the runtime does.
    ``epochs=0`` gives the PTQ initialisation alone (the baseline QAT is measured against).
    """
    import torch

    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    if preset not in PRESETS:
        raise EdgedermError(f"unknown NNCF preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if epochs < 0 or lr <= 0:
        raise EdgedermError(f"QAT needs qat_epochs >= 0 and qat_lr > 0, got {epochs} and {lr}")
    items = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for b in calibration]
    if not items:
        raise EdgedermError("quantization-aware training needs calibration images; the calibration set is empty")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise EdgedermError(f"quantization-aware training needs (N, C, H, W) train images, got shape {images.shape}")
    t0 = time.perf_counter()
    teacher = model.float().eval()
    student = copy.deepcopy(teacher)  # NNCF wraps the module it is given: keep the FP32 model clean
    quantized = nncf.quantize(
        student, nncf.Dataset(items), subset_size=len(items),
        preset=nncf.QuantizationPreset.PERFORMANCE if preset == "performance" else nncf.QuantizationPreset.MIXED,
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE),
    )
    quantized.eval()
    ptq_seconds = time.perf_counter() - t0
    check = images[:CHECK_IMAGES]
    before = fidelity(quantized, teacher, check)

    from nncf.torch.quantization.layers import BaseQuantizer

    ranges = {id(p) for m in quantized.modules() if isinstance(m, BaseQuantizer) for p in m.parameters()}
    params = [p for p in quantized.parameters() if p.requires_grad and (train_ranges or id(p) not in ranges)]
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    t_scale = float(temperature)
    losses: list[float] = []
    t1 = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        total, seen = 0.0, 0
        for start in range(0, len(order), batch):
            idx = np.sort(order[start : start + batch])
            x = torch.from_numpy(images[idx])
            if hflip:
                flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            with torch.no_grad():
                target = torch.log_softmax(teacher(x) / t_scale, dim=1)
            logp = torch.log_softmax(quantized(x) / t_scale, dim=1)
            loss = torch.nn.functional.kl_div(logp, target, reduction="batchmean", log_target=True) * t_scale**2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        losses.append(total / max(seen, 1))
        log.info("QAT epoch %d/%d: distillation loss %.5f (%d images, %.0f s so far)", epoch + 1, epochs, losses[-1],
                 seen, time.perf_counter() - t1)
    quantized.eval()
    after = fidelity(quantized, teacher, check) if epochs else before
    info = {
        "qat": {
            "method": "nncf-qat",
            "epochs": int(epochs),
            "lr": float(lr),
            "batch": int(batch),
            "temperature": t_scale,
            "hflip": bool(hflip),
            "train_ranges": bool(train_ranges),
            "train_images": int(len(images)),
            "calibration_batches": len(items),
            "preset": preset,
            "overflow_fix": "disable",
            "loss_per_epoch": [round(v, 6) for v in losses],
            # torch fake-quantized model vs FP32 on the first fine-tuning images (train split)
            "check_images": int(len(check)),
            "before": before,
            "after": after,
            "ptq_seconds": round(ptq_seconds, 1),
            "finetune_seconds": round(time.perf_counter() - t1, 1),
            "nncf": package_version("nncf"),
        }
    }
    log.info("QAT: logit RMS vs FP32 %.4f -> %.4f, agreement %.3f -> %.3f on %d train images (%.0f s)",
             before["logit_rms"], after["logit_rms"], before["agreement"], after["agreement"], len(check),
             time.perf_counter() - t0)
    return quantized, info
