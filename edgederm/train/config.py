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
    pretrained: bool = False
    weights: str | None = None
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
    class_weights: bool = True
    balanced_sampler: bool = False
    patience: int = 5
    tta: list[str] = field(default_factory=lambda: ["identity"])
    n_boot: int = 1000
    threads: int | None = None
    cache_images: bool = True
    synthetic: dict[str, Any] | None = None  # generate the embedded data set into `data` first

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise EdgedermError(f"{where}: unknown keys {unknown}; allowed: {sorted(names)}")
    return cls(**d)


def load_recipe(path: str | Path, **overrides: Any) -> TrainConfig:
    """Parse a recipe; ``overrides`` (e.g. from the CLI) replace top-level keys."""
    p = Path(path)
    if not p.exists():
        raise EdgedermError(f"recipe not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise EdgedermError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise EdgedermError(f"{p}: a recipe is a YAML mapping")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    members = raw.pop("members", None)
    if not members:
        raise EdgedermError(f"{p}: a recipe needs at least one entry under 'members'")
    for key in ("name", "data"):
        if key not in raw:
            raise EdgedermError(f"{p}: missing required key {key!r}")
    cfg = _build(TrainConfig, raw, str(p))
    cfg.members = [_build(MemberConfig, m, f"{p} members[{i}]") for i, m in enumerate(members)]
    # Relative data/out paths in a recipe are relative to the working directory (like CLI args),
    # except an explicit ${EDGEDERM_DATA}: expand environment variables.
    import os

    cfg.data = os.path.expandvars(cfg.data)
    cfg.out = os.path.expandvars(cfg.out)
    if cfg.split_file:
        cfg.split_file = os.path.expandvars(cfg.split_file)
    return cfg
