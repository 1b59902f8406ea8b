"""Training recipes: YAML files in ``train/`` parsed into typed, validated configs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import EdgedermError


@dataclass
class MemberConfig:
    model: str
    input_size: int | None = None  # default: the registry's native size
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # Initialisation is always explicit: ImageNet weights (`pretrained`), a local file
    # (`weights`), or `from_scratch: true`. A model that has pretrained weights refuses to start
    # from random init silently.
    pretrained: bool = False
    weights: str | None = None
    from_scratch: bool = False
    loss: str = "ce"  # "ce" | "focal"
    gamma: float = 2.0  # focal-loss focusing parameter (per model, as in the seed ensemble)
    label_smoothing: float = 0.0
    schedule: str = "onecycle"  # "onecycle" | "cosine" | "plateau"
    warmup: float = 0.15  # fraction of steps warming up (onecycle / cosine)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    name: str
    data: str
    format: str = "auto"
    taxonomy: str | None = "ham7"
    members: list[MemberConfig] = field(default_factory=list)
    out: str = "runs"
    seed: int = 42
    val: float = 0.15
    test: float = 0.15
    split_file: str | None = None
    max_images: int | None = None  # smoke runs: a lesion-grouped, class-stratified subset of ~N images
    class_weights: bool | str = True  # true = "inverse"; or "sqrt_inverse" / "effective_number"
    sampler: str = "shuffle"  # "shuffle" | "balanced" | "oversample"
    augment: str = "basic"  # "basic" | "tiers" (per-class tiers by imbalance ratio)
    tiers: dict[str, Any] | None = None  # TierConfig overrides (thresholds, boost, ...)
    patience: int = 5
    tta: list[str] = field(default_factory=lambda: ["identity"])
    thresholds: dict[str, Any] | None = None  # ThresholdConfig; None = plain argmax
    combine: str = "bacc_weighted"  # "bacc_weighted" | "stacking"
    cv_folds: int = 0  # >1: k-fold CV ensemble (each member trained once per fold)
    seeds: list[int] | None = None  # several seeds: one run per seed + mean ± sd summary
    # Ablations: [{name, <any recipe key, e.g. members>}, ...] trained on one shared split and
    # compared in one table (paired bootstrap against the first variant).
    variants: list[dict[str, Any]] | None = None
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "off"  # "off" | "bf16" | "fp16" (CUDA only)
    channels_last: bool = False
    n_boot: int = 1000
    threads: int | None = None
    cache_images: bool = True
    workers: int = 0
    report: bool = True  # plots + report.md in the run folder
    # Segment-then-classify: {checkpoint, mode: mask|crop|mask+crop, margin, background}; the
    # classifier (and the runtime, via the card) sees the segmented lesion.
    segment: dict[str, Any] | None = None
    gradcam: dict[str, Any] | None = None  # {data, format, n_images}: Grad-CAM grid + CAM-in-mask
    synthetic: dict[str, Any] | None = None  # generate the embedded data set into `data` first
    # Options of the later stages for `edgederm run` (distill/export/evaluate/bench/gradcam); see
    # edgederm/pipeline.py. Training ignores it, and it is not part of the recipe's content hash.
    pipeline: dict[str, Any] | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def content_sha256(self) -> str:
        """Hash of everything that shapes the trained model; see ``recipe_content_sha256``."""
        return recipe_content_sha256(self.to_dict())


# Keys that do not change the trained model: where things are (the data's content is covered by
# the data fingerprint in the card), how many threads, what is drawn afterwards.
_NOT_CONTENT = ("pipeline", "data", "out", "threads", "workers", "cache_images", "report", "gradcam")


def recipe_content_sha256(recipe: dict[str, Any]) -> str:
    """SHA-256 of a recipe mapping (``TrainConfig.to_dict()`` or a run's ``recipe.yaml``)."""
    import hashlib
    import json

    d = {k: v for k, v in recipe.items() if k not in _NOT_CONTENT}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise EdgedermError(f"{where}: unknown keys {unknown}; allowed: {sorted(names)}")
    return cls(**d)


def read_recipe_yaml(p: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """A recipe file as a mapping with the non-None ``overrides`` applied (one-line errors)."""
    if not p.exists():
        raise EdgedermError(f"recipe not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise EdgedermError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise EdgedermError(f"{p}: a recipe is a YAML mapping")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return raw


def load_recipe(path: str | Path, **overrides: Any) -> TrainConfig:
    """Parse a recipe; ``overrides`` (e.g. from the CLI) replace top-level keys."""
    p = Path(path)
    raw = read_recipe_yaml(p, overrides)
    members = raw.pop("members", None)
    if not members:
        raise EdgedermError(f"{p}: a recipe needs at least one entry under 'members'")
    for key in ("name", "data"):
        if key not in raw:
            raise EdgedermError(f"{p}: missing required key {key!r}")
    cfg = _build(TrainConfig, raw, str(p))
    cfg.members = [_build(MemberConfig, m, f"{p} members[{i}]") for i, m in enumerate(members)]
    validate(cfg, str(p))
    # Relative data/out paths in a recipe are relative to the working directory (like CLI args),
    # except an explicit ${EDGEDERM_DATA}: expand environment variables.
    import os

    cfg.data = os.path.expandvars(cfg.data)
    if "$" in cfg.data:
        raise EdgedermError(f"{p}: data path {cfg.data!r} names an unset environment variable (e.g. export EDGEDERM_DATA=/path/to/data)")
    cfg.out = os.path.expandvars(cfg.out)
    if cfg.split_file:
        cfg.split_file = os.path.expandvars(cfg.split_file)
    if cfg.segment and "checkpoint" in cfg.segment:
        cfg.segment["checkpoint"] = os.path.expandvars(str(cfg.segment["checkpoint"]))
    if cfg.gradcam and "data" in cfg.gradcam:
        cfg.gradcam["data"] = os.path.expandvars(str(cfg.gradcam["data"]))
    return cfg


_CHOICES = {
    "sampler": ("shuffle", "balanced", "oversample"),
    "augment": ("basic", "tiers"),
    "combine": ("bacc_weighted", "stacking"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("off", "bf16", "fp16"),
}
_MEMBER_CHOICES = {"loss": ("ce", "focal"), "schedule": ("onecycle", "cosine", "plateau")}


def validate(cfg: TrainConfig, where: str = "recipe") -> None:
    """Refuse impossible settings before any data is read (one line each)."""
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise EdgedermError(f"{where}: {key}={getattr(cfg, key)!r}; choose one of {', '.join(allowed)}")
    if isinstance(cfg.class_weights, str) and cfg.class_weights not in ("inverse", "sqrt_inverse", "effective_number"):
        raise EdgedermError(f"{where}: class_weights={cfg.class_weights!r}; use true/false, inverse, sqrt_inverse or effective_number")
    if cfg.cv_folds == 1 or cfg.cv_folds < 0:
        raise EdgedermError(f"{where}: cv_folds must be 0 (off) or >= 2")
    if cfg.variants is not None:
        if cfg.seeds:
            raise EdgedermError(f"{where}: use either seeds or variants, not both")
        vnames = [v.get("name") if isinstance(v, dict) else None for v in cfg.variants]
        if len(cfg.variants) < 2 or not all(isinstance(n, str) and n for n in vnames) or len(set(vnames)) != len(vnames):
            raise EdgedermError(f"{where}: variants needs >= 2 mappings, each with a unique 'name'")
        for v in cfg.variants:
            variant_config(cfg, v, where)  # fail on a typo before any training
    for i, m in enumerate(cfg.members):
        for key, allowed in _MEMBER_CHOICES.items():
            if getattr(m, key) not in allowed:
                raise EdgedermError(f"{where} members[{i}]: {key}={getattr(m, key)!r}; choose one of {', '.join(allowed)}")
        if sum([bool(m.pretrained), m.weights is not None, bool(m.from_scratch)]) > 1:
            raise EdgedermError(f"{where} members[{i}] ({m.model}): choose one of pretrained, weights, from_scratch")


_NOT_PER_VARIANT = frozenset({"name", "out", "data", "format", "taxonomy", "seed", "val", "test", "split_file", "seeds", "variants", "cv_folds"})


def variant_config(cfg: TrainConfig, variant: dict[str, Any], where: str = "recipe") -> TrainConfig:
    """The recipe with one variant's overrides applied (split-defining keys cannot change)."""
    from dataclasses import replace

    v = dict(variant)
    name = v.pop("name")
    fixed = sorted(set(v) & _NOT_PER_VARIANT)
    if fixed:
        raise EdgedermError(f"{where} variant {name!r}: {fixed} cannot differ between variants (they share one split)")
    members = v.pop("members", None)
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(v) - names)
    if unknown:
        raise EdgedermError(f"{where} variant {name!r}: unknown keys {unknown}")
    out = replace(cfg, variants=None, **v)
    if members is not None:
        out.members = [_build(MemberConfig, m, f"{where} variant {name!r} members[{i}]") for i, m in enumerate(members)]
    return out
