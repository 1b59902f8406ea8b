"""Training: recipes (YAML) → run folder with checkpoint, card and metrics."""

import importlib
from typing import Any

from .config import MemberConfig, TrainConfig, load_recipe

# ``train`` (the whole training run: evaluation, reports, Grad-CAM) is imported on first use, so
# that importing a building block (``train.config``, ``train.losses``) does not import all of it.


def __getattr__(name: str) -> Any:
    if name == "train":
        return importlib.import_module(f"{__name__}.run").train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["MemberConfig", "TrainConfig", "load_recipe", "train"]
