"""Grad-CAM for every registered model, overlay grids, and a lesion-mask localisation score.

Grad-CAM (Selvaraju et al., ICCV 2017): the activations ``A`` of a target layer are weighted by
the spatial mean of the class score's gradient, ``cam = ReLU(sum_k mean(dy/dA_k) * A_k)``, and
upsampled to the input. The target layer of each architecture is declared once in the model
registry (``ModelSpec.target_layer``); ViTs (``family="vit"``) have their token sequence
reshaped into the patch grid (prefix tokens dropped).

Implementation notes:

- A forward hook keeps the target layer's output and hands the rest of the network a *clone*.
  torchvision/timm ResNets use in-place ReLUs: without the clone, an in-place op after the
  target layer would overwrite the kept activation (and ``register_full_backward_hook`` raises
  on such graphs). The gradient is taken with ``torch.autograd.grad`` with respect to the kept
  tensor, so no parameter's ``.grad`` is touched and ``requires_grad`` flags are left alone (the
  input is what requires grad, so frozen models work too).
- CAMs are divided by their maximum, not min-max scaled: ReLU makes them non-negative, and
  keeping zero at zero keeps the energy ratios that ``cam_mask_energy`` measures meaningful.
  A CAM with no positive evidence anywhere is returned as all zeros (its energy score is NaN).
- Checkpoint members are fed exactly what the runtime feeds them: each member's
  ``PreprocessSpec`` from the card (``TorchPredictor.heads()``), via ``geometric`` →
  ``normalize`` → ``finalize``. CAMs therefore live in the member's input frame (after its
  resize/crop), and overlays and lesion masks are put in that frame with the same
  ``geometric`` call.

``cam_mask_energy`` is the "energy-based pointing game" (Wang et al., Score-CAM, CVPRW 2020):
the fraction of the CAM's total mass inside the lesion mask. Its chance level is the mask's
area fraction (a uniform CAM scores exactly that), so reports always carry both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import DataError, EdgedermError
from ..fsutil import atomic_path, write_json_atomic
from ..preprocess import PreprocessSpec

if TYPE_CHECKING:
    from ..data.records import DatasetIndex, Record
    from ..runtime.base import Predictor

log = logging.getLogger(__name__)

ClassIdx = int | Sequence[int] | None
ImageLike = Image.Image | str | Path

__all__ = [
    "GradCAM",
    "MemberCams",
    "cam_in_mask_report",
    "cam_mask_energy",
    "cams_for_checkpoint",
    "explain_run",
    "overlay",
    "save_cam_grid",
]


# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------


class GradCAM:
    """Grad-CAM on ``model.get_submodule(target_layer)``.

    ``cam(x, class_idx)`` → ``(N, H, W)`` float32 maps in [0, 1] at the input's size.
    ``class_idx``: ``None`` explains each image's arg-max class, an int one class for all
    images, a sequence one class per image; the classes used are in ``last_class_idx``.
    The CAM is computed in eval mode; every module's train/eval flag is restored afterwards.
    Use as a context manager, or call ``close()``, to remove the hook.
    """

    def __init__(self, model: nn.Module, target_layer: str, family: str = "cnn") -> None:
        self.model = model
        self.target_layer = target_layer
        self.family = family
        try:
            self.module = model.get_submodule(target_layer)
        except AttributeError:
            raise EdgedermError(
                f"{type(model).__name__} has no layer {target_layer!r} for Grad-CAM"
            ) from None
        self.last_class_idx: np.ndarray | None = None
        self._recording = False
        self._act: torch.Tensor | None = None
        self._handle: Any = self.module.register_forward_hook(self._hook)

    # -- hook lifecycle ------------------------------------------------------------------------
    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if not self._recording:
            return None
        if not isinstance(output, torch.Tensor):
            raise EdgedermError(
                f"Grad-CAM layer {self.target_layer!r} returns {type(output).__name__}, not a tensor"
            )
        self._act = output
        # Downstream in-place ops (ReLU(inplace=True)) then modify the clone, not the kept tensor.
        return output.clone()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "GradCAM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- computation ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, class_idx: ClassIdx = None) -> np.ndarray:
        if self._handle is None:
            raise RuntimeError("this GradCAM is closed")
        if x.ndim != 4:
            raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        device = next((p.device for p in self.model.parameters()), x.device)
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                # The input requires grad (not the parameters) so frozen models have a graph too.
                xin = x.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
                self._recording, self._act = True, None
                try:
                    out = self.model(xin)
                finally:
                    self._recording = False
                act, self._act = self._act, None
                if act is None:
                    raise EdgedermError(f"Grad-CAM layer {self.target_layer!r} was not run by the forward pass")
                logits = out[0] if isinstance(out, (tuple, list)) else out
                if logits.ndim != 2:
                    raise EdgedermError(f"Grad-CAM needs (N, classes) outputs, got shape {tuple(logits.shape)}")
                idx = _class_indices(class_idx, logits)
                score = logits.gather(1, idx[:, None]).sum()
                (grad,) = torch.autograd.grad(score, act)
        finally:
            for m, training in modes:
                m.training = training
        self.last_class_idx = idx.cpu().numpy()
        return self._cam(act.detach(), grad.detach(), (int(x.shape[-2]), int(x.shape[-1])))

    def _cam(self, act: torch.Tensor, grad: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        if self.family == "vit" or act.ndim == 3:
            act, grad = self._tokens_to_grid(act, size), self._tokens_to_grid(grad, size)
        if act.ndim != 4:
            raise EdgedermError(
                f"Grad-CAM layer {self.target_layer!r} gives shape {tuple(act.shape)}; expected (N, C, h, w)"
            )
        act, grad = act.float(), grad.float()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))
        if not torch.isfinite(cam).all():
            raise EdgedermError(f"Grad-CAM at {self.target_layer!r} is not finite (the model's activations overflow)")
        # Bilinear interpolation is a convex combination: the map stays >= 0.
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(dim=1).values.clamp_min(0)
        cam = torch.where(peak[:, None, None] > 0, cam / peak.clamp_min(1e-30)[:, None, None], torch.zeros_like(cam))
        return cam.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)

    def _tokens_to_grid(self, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(N, T, C) tokens → (N, C, h, w), dropping class/register tokens."""
        if t.ndim != 3:
            raise EdgedermError(f"ViT Grad-CAM layer {self.target_layer!r} gives shape {tuple(t.shape)}; expected (N, tokens, C)")
        prefix = getattr(self.model, "num_prefix_tokens", None)
        if prefix is None:
            prefix = 1 if getattr(self.model, "cls_token", None) is not None else 0
        t = t[:, int(prefix):]
        n = t.shape[1]
        h, w = self._grid(n, size)
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    def _grid(self, n: int, size: tuple[int, int]) -> tuple[int, int]:
        pe = getattr(self.model, "patch_embed", None)
        patch = getattr(pe, "patch_size", None)
        if patch is not None:
            ph, pw = (patch, patch) if isinstance(patch, int) else patch
            h, w = size[0] // ph, size[1] // pw
            if h * w == n:
                return h, w
        grid = getattr(pe, "grid_size", None)
        if grid is not None and grid[0] * grid[1] == n:
            return int(grid[0]), int(grid[1])
        side = int(round(n**0.5))
        if side * side != n:
            raise EdgedermError(f"cannot arrange {n} tokens of {self.target_layer!r} into a patch grid")
        return side, side


def _class_indices(class_idx: ClassIdx, logits: torch.Tensor) -> torch.Tensor:
    n, c = logits.shape
    if class_idx is None:
        return logits.detach().argmax(dim=1)
    if isinstance(class_idx, (int, np.integer)):
        idx = torch.full((n,), int(class_idx), dtype=torch.long, device=logits.device)
    else:
        idx = torch.as_tensor(np.asarray(class_idx, dtype=np.int64), device=logits.device)
        if idx.shape != (n,):
            raise EdgedermError(f"class_idx has {idx.numel()} entries for a batch of {n} images")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= c):
        raise EdgedermError(f"class index out of range for a model with {c} classes: {idx.tolist()}")
    return idx


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class MemberCams:
    """The CAMs of one checkpoint member, in that member's input frame."""

    name: str  # registry name
    target_layer: str
    spec: PreprocessSpec  # the member's preprocessing (from the card)
    cams: np.ndarray  # (N, H, W) in [0, 1], H x W = spec.input_size
    class_idx: np.ndarray  # (N,) the class each CAM explains


def _torch_predictor(path_or_predictor: "str | Path | Predictor") -> Any:
    from ..runtime import load
    from ..runtime.base import Predictor
    from ..formats.torch.runtime import TorchPredictor

    pred = path_or_predictor if isinstance(path_or_predictor, Predictor) else load(path_or_predictor)
    if not isinstance(pred, TorchPredictor):
        raise EdgedermError(
            f"Grad-CAM needs the PyTorch checkpoint (.pt) the artifact was exported from; {pred.path.name} is {pred.format}"
        )
    return pred


def _member_names(pred: Any) -> list[str]:
    meta = pred.card.model.get("members", [])
    names = [m.get("name") for m in meta] if len(meta) == len(pred.models) else []
    if not names or not all(names):
        # The card does not list the members one to one: the checkpoint itself names them.
        from ..checkpoint import load_checkpoint

        names = [m.name for m in load_checkpoint(pred.path)[0]]
    return [str(n) for n in names]


def _check_spec(spec: PreprocessSpec, name: str) -> None:
    if spec.layout != "NCHW" or spec.dtype not in ("float32", "float16"):
        raise EdgedermError(f"member {name!r}: Grad-CAM needs a float NCHW torch input, the card says {spec.layout} {spec.dtype}")


def cams_for_checkpoint(
    path_or_predictor: "str | Path | Predictor",
    images: Sequence[ImageLike],
    class_idx: ClassIdx = None,
    *,
    batch_size: int = 8,
) -> list[MemberCams]:
    """One Grad-CAM per member of a torch checkpoint (or its ``TorchPredictor``), per image.

    ``class_idx=None`` explains, in every member, the class the checkpoint decides for the image
    (ensemble probabilities, no TTA, the card's decision rule), so the members' maps answer the
    same question. Each member gets its own preprocessing spec from the card.
    """
    from ..models import get_model_spec

    pred = _torch_predictor(path_or_predictor)
    heads = pred.heads()
    pil = [pred.load_image(im) for im in images]
    n = len(pil)
    if class_idx is None:
        target: np.ndarray | int = pred.decide(pred.predict_proba(pil, tta=False)) if n else np.zeros(0, int)
    elif isinstance(class_idx, (int, np.integer)):
        target = int(class_idx)
    else:
        target = np.asarray(class_idx, dtype=np.int64)
        if target.shape != (n,):
            raise EdgedermError(f"class_idx has {target.size} entries for {n} images")
    out: list[MemberCams] = []
    for name, model, head in zip(_member_names(pred), pred.models, heads):
        mspec = get_model_spec(name)
        spec = head.spec
        _check_spec(spec, name)
        cams: list[np.ndarray] = []
        used: list[np.ndarray] = []
        with GradCAM(model, mspec.target_layer, mspec.family) as gc:
            for s in range(0, n, batch_size):
                chunk = pil[s : s + batch_size]
                # The runtime's own path (Predictor.predict_proba): geometric → normalize → finalize.
                x = spec.finalize(np.stack([spec.normalize(np.asarray(spec.geometric(im))) for im in chunk]))
                tgt = target if isinstance(target, int) else target[s : s + batch_size]
                cams.append(gc(torch.from_numpy(np.ascontiguousarray(x)).float(), tgt))
                used.append(gc.last_class_idx)  # type: ignore[arg-type]
        h, w = spec.input_size
        out.append(
            MemberCams(
                name=name,
                target_layer=mspec.target_layer,
                spec=spec,
                cams=np.concatenate(cams) if cams else np.zeros((0, h, w), np.float32),
                class_idx=np.concatenate(used) if used else np.zeros(0, np.int64),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------------------------


def _resize_map(a: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    if (a.shape[1], a.shape[0]) == size_wh:
        return a.astype(np.float32)
    im = Image.fromarray(a.astype(np.float32), mode="F").resize(size_wh, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)


def overlay(img: Image.Image, cam: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> Image.Image:
    """The CAM as a colour map blended over ``img`` (the CAM is resized to the image)."""
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"a CAM is 2-D, got shape {cam.shape}")
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    cam = _resize_map(np.clip(np.nan_to_num(cam), 0.0, 1.0), rgb.size)
    heat = colormaps[cmap](cam)[..., :3].astype(np.float32) * 255.0
    base = np.asarray(rgb, dtype=np.float32)
    blend = (1.0 - alpha) * base + alpha * heat
    return Image.fromarray(np.clip(np.round(blend), 0, 255).astype(np.uint8), mode="RGB")


def save_cam_grid(
    path: str | Path,
    images: Sequence[Image.Image],
    cams_per_member: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    member_names: Sequence[str],
    *,
    specs: Sequence[PreprocessSpec | None] | None = None,
    masks: Sequence[Image.Image | None] | None = None,
    alpha: float = 0.45,
    dpi: int = 100,
) -> Path:
    """A PNG grid: one row per image; columns = the image, then each member's overlay.

    ``cams_per_member[m][i]`` is member ``m``'s CAM of image ``i``. With ``specs[m]`` the overlay
    is drawn on ``specs[m].geometric(image)`` (the CAM's frame: what the member saw); without, the
    CAM is stretched over the whole image. ``masks`` (optional, per image) draws the lesion
    outline. Written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, m = len(images), len(member_names)
    if len(cams_per_member) != m:
        raise ValueError(f"{len(cams_per_member)} CAM lists for {m} member names")
    if any(len(c) != n for c in cams_per_member):
        raise ValueError(f"every member needs one CAM per image ({n})")
    if len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images")
    if specs is not None and len(specs) != m:
        raise ValueError(f"{len(specs)} specs for {m} members")
    if masks is not None and len(masks) != n:
        raise ValueError(f"{len(masks)} masks for {n} images")
    if n == 0:
        raise ValueError("no images to draw")

    fig = Figure(figsize=(2.3 * (m + 1), 2.45 * n), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, m + 1, squeeze=False)
    for i, img in enumerate(images):
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        mask = masks[i] if masks is not None else None
        ax = axes[i][0]
        ax.imshow(rgb)
        _outline(ax, mask, None)
        ax.set_title(titles[i], fontsize=7)
        for j in range(m):
            spec = specs[j] if specs is not None else None
            view = spec.geometric(rgb) if spec is not None else rgb
            ax = axes[i][j + 1]
            ax.imshow(overlay(view, np.asarray(cams_per_member[j][i]), alpha=alpha))
            _outline(ax, mask, spec, view.size)
            if i == 0:
                ax.set_title(member_names[j], fontsize=8)
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.4)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _outline(ax: Any, mask: Image.Image | None, spec: PreprocessSpec | None, size: tuple[int, int] | None = None) -> None:
    if mask is None:
        return
    m = _mask_in_frame(mask, spec)
    if size is not None and (m.shape[1], m.shape[0]) != size:
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) >= 128
    if m.any() and not m.all():
        ax.contour(m.astype(np.float32), levels=[0.5], colors="white", linewidths=0.8)


# ---------------------------------------------------------------------------------------------
# localisation score
# ---------------------------------------------------------------------------------------------


def _binary(mask: Any) -> np.ndarray:
    m = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {m.shape}")
    if m.dtype == bool:
        return m
    m = m.astype(np.float32)
    # 0/255 images and 0/1 arrays alike: binarise at half the range actually used.
    return m >= (127.5 if m.max(initial=0) > 1 else 0.5)


def _mask_in_frame(mask: Image.Image, spec: PreprocessSpec | None) -> np.ndarray:
    """The lesion mask with the member's geometry applied (same ``geometric`` as the image)."""
    if spec is None:
        return _binary(mask)
    # Padding is never lesion, whatever colour the spec pads images with.
    g = spec.with_(pad_value=(0, 0, 0)).geometric(mask.convert("RGB"))
    return _binary(g)


def cam_mask_energy(cam: np.ndarray, mask: Any) -> float:
    """Fraction of the CAM's total energy (sum) inside the binary lesion mask.

    ``mask`` (array or PIL image; bool, 0/1 or 0/255) is resized to the CAM with nearest
    neighbour when the sizes differ. A uniform CAM scores the mask's area fraction (chance);
    an all-zero CAM has no energy to place and scores NaN.
    """
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"a CAM is 2-D, got shape {cam.shape}")
    if not np.isfinite(cam).all() or (cam < 0).any():
        raise ValueError("a CAM must be finite and non-negative")
    m = _binary(mask)
    if m.shape != cam.shape:
        im = Image.fromarray(m.astype(np.uint8) * 255).resize((cam.shape[1], cam.shape[0]), Image.Resampling.NEAREST)
        m = np.asarray(im) >= 128
    total = cam.sum()
    if total <= 0:
        return float("nan")
    return float(cam[m].sum() / total)


def _summary(x: np.ndarray, *, n_boot: int, seed: int, level: float) -> dict[str, Any]:
    """Mean, sd and a percentile-bootstrap CI of the mean over images (NaNs dropped)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return {"mean": None, "sd": None, "lo": None, "hi": None, "n": 0, "level": level}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return {
        "mean": float(x.mean()),
        "sd": float(x.std(ddof=1)) if n > 1 else None,
        "lo": float(lo),
        "hi": float(hi),
        "n": n,
        "level": level,
    }


def _spread(n_total: int, k: int | None) -> list[int]:
    """``k`` indices spread evenly over ``range(n_total)`` (all of them when ``k`` is None)."""
    if k is None or k >= n_total:
        return list(range(n_total))
    if k <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, n_total - 1, k)})


def cam_in_mask_report(
    path_or_predictor: "str | Path | Predictor",
    index_with_masks: "DatasetIndex",
    max_images: int | None = None,
    *,
    class_idx: ClassIdx = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    batch_size: int = 8,
) -> dict[str, Any]:
    """How much of each member's Grad-CAM energy falls inside the lesion mask.

    Uses the records of ``index_with_masks`` that have a ``mask_ref`` (PH2 has them), at most
    ``max_images`` of them spread evenly over the index. Per member: ``energy_in_mask`` and
    ``mask_area_fraction`` (the chance level) as mean ± sd with a bootstrap CI of the mean over
    images, and ``excess_over_chance`` (the per-image difference, paired). ``class_idx`` as in
    ``cams_for_checkpoint`` (default: the checkpoint's decided class).
    """
    from ..data.images import load_image

    pred = _torch_predictor(path_or_predictor)
    masked = [r for r in index_with_masks.records if r.mask_ref]
    if not masked:
        raise DataError(f"{index_with_masks.name}: no record has a lesion mask (mask_ref); PH2 has them")
    records: list[Record] = [masked[i] for i in _spread(len(masked), max_images)]
    if isinstance(class_idx, (list, tuple, np.ndarray)) and len(class_idx) != len(records):
        raise EdgedermError(f"class_idx has {len(class_idx)} entries for {len(records)} images")
    images = [pred.load_image(r.ref) for r in records]
    masks = [load_image(r.mask_ref) for r in records]  # type: ignore[arg-type]
    members = cams_for_checkpoint(pred, images, class_idx, batch_size=batch_size)

    classes = list(pred.classes)
    per_image: list[dict[str, Any]] = [
        {"image_id": r.image_id, "label": r.label, "explained_class": [], "energy_in_mask": [], "mask_area_fraction": []}
        for r in records
    ]
    out_members: list[dict[str, Any]] = []
    for mc in members:
        energy = np.full(len(records), np.nan)
        area = np.zeros(len(records))
        for i, mask in enumerate(masks):
            m = _mask_in_frame(mask, mc.spec)
            area[i] = float(m.mean())
            energy[i] = cam_mask_energy(mc.cams[i], m)
            per_image[i]["explained_class"].append(classes[int(mc.class_idx[i])])
            per_image[i]["energy_in_mask"].append(None if np.isnan(energy[i]) else float(energy[i]))
            per_image[i]["mask_area_fraction"].append(float(area[i]))
        ok = np.isfinite(energy)
        stats = {
            "energy_in_mask": _summary(energy, n_boot=n_boot, seed=seed, level=level),
            "mask_area_fraction": _summary(area[ok], n_boot=n_boot, seed=seed, level=level),
            "excess_over_chance": _summary(energy[ok] - area[ok], n_boot=n_boot, seed=seed, level=level),
        }
        e_mean, a_mean = stats["energy_in_mask"]["mean"], stats["mask_area_fraction"]["mean"]
        out_members.append(
            {
                "name": mc.name,
                "target_layer": mc.target_layer,
                "input_size": list(mc.spec.input_size),
                **stats,
                "ratio_to_chance": (e_mean / a_mean) if e_mean is not None and a_mean else None,
                "n_degenerate": int((~ok).sum()),
            }
        )
        log.info(
            "%s: CAM energy in lesion %.3f (chance %.3f) over %d images",
            mc.name, e_mean if e_mean is not None else float("nan"), a_mean or float("nan"), int(ok.sum()),
        )
    return {
        "dataset": index_with_masks.name,
        "checkpoint": str(pred.path),
        "n_images": len(records),
        "n_without_mask": len(index_with_masks.records) - len(masked),
        "explained": "decision" if class_idx is None else "given",
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "members": out_members,
        "images": per_image,
    }


# ---------------------------------------------------------------------------------------------
# the CLI's entry point
# ---------------------------------------------------------------------------------------------


def explain_run(
    checkpoint: str | Path,
    data_path: str | Path,
    fmt: str = "auto",
    out_dir: str | Path = ".",
    n_images: int = 8,
    *,
    max_report_images: int | None = None,
    class_idx: int | None = None,
    taxonomy: str | None = None,
) -> dict[str, Any]:
    """Write ``gradcam.png`` (``n_images`` images spread over the data set) and, when the data
    has lesion masks, ``cam_in_mask.json`` (over ``max_report_images``, default all masked
    images) into ``out_dir``. Returns the paths and the per-member localisation summary."""
    from ..data.images import load_image
    from ..data.readers import read_dataset

    if n_images < 1:
        raise EdgedermError(f"n_images must be at least 1, got {n_images}")
    pred = _torch_predictor(checkpoint)
    index = read_dataset(data_path, fmt, taxonomy=taxonomy)
    if not len(index):
        raise DataError(f"{data_path}: no usable images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    records = [index.records[i] for i in _spread(len(index), n_images)]
    images = [pred.load_image(r.ref) for r in records]
    masks = [load_image(r.mask_ref) if r.mask_ref else None for r in records]
    members = cams_for_checkpoint(pred, images, class_idx)
    classes = list(pred.classes)
    explained = members[0].class_idx
    titles = [f"{r.image_id} ({r.label})\n→ {classes[int(c)]}" for r, c in zip(records, explained)]
    names = [f"{i}: {m.name}" for i, m in enumerate(members)] if len(members) > 1 else [m.name for m in members]
    grid = save_cam_grid(
        out / "gradcam.png",
        images,
        [list(m.cams) for m in members],
        titles,
        names,
        specs=[m.spec for m in members],
        masks=masks if any(m is not None for m in masks) else None,
    )
    result: dict[str, Any] = {"gradcam": str(grid), "n_images": len(images), "members": [m.name for m in members], "cam_in_mask": None}
    if any(r.mask_ref for r in index.records):
        report = cam_in_mask_report(pred, index, max_images=max_report_images, class_idx=class_idx)
        path = out / "cam_in_mask.json"
        write_json_atomic(path, report)
        result["cam_in_mask"] = str(path)
        result["summary"] = [
            {k: m[k] for k in ("name", "energy_in_mask", "mask_area_fraction", "excess_over_chance")} for m in report["members"]
        ]
    else:
        log.info("%s has no lesion masks: cam_in_mask.json not written", index.name)
    return result
