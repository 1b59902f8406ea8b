"""Training: recipes (YAML) → run folder with checkpoint, card and metrics."""

from .config import MemberConfig, TrainConfig, load_recipe
from .run import train

__all__ = ["MemberConfig", "TrainConfig", "load_recipe", "train"]
