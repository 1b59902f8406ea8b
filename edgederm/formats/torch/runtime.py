"""PyTorch checkpoints (``.pt``): the FP32 reference every exported artifact is gated against."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...preprocess import PreprocessSpec
from ...runtime.base import Head, Predictor

if TYPE_CHECKING:
    from ...card import ArtifactCard


class TorchPredictor(Predictor):
    format = "torch"

    def __init__(self, path: Path, card: "ArtifactCard", *, threads: int | None = None, device: str = "cpu") -> None:
        import torch

        from ...checkpoint import load_checkpoint

        super().__init__(path, card)
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        members, _ = load_checkpoint(path)
        self.models = [m.build().to(self.device) for m in members]
        meta = card.model.get("members", [])
        if len(meta) != len(self.models):
            meta = [{"name": m.name, "weight": 1.0} for m in members]
        self._heads = [
            Head(
                PreprocessSpec.from_dict(info["preprocessing"]) if "preprocessing" in info else card.preprocessing,
                float(info.get("weight", 1.0)),
                functools.partial(self._run, model),
            )
            for info, model in zip(meta, self.models)
        ]

    def _run(self, model: Any, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            return model(x).float().cpu().numpy()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        if len(self.models) != 1:
            raise ValueError("forward() on an ensemble is ambiguous; use heads() or predict_proba()")
        return self._run(self.models[0], batch)

    def heads(self) -> list[Head]:
        return self._heads
