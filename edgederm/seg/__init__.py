"""Lesion segmentation: an Attention U-Net trained on lesion masks (PH2), and segment-then-classify.

``train_segmenter(load_seg_recipe("train/ph2-attention-unet.yaml"))`` trains and scores a
segmenter; ``load_segmenter`` + ``predict_mask`` run it; ``segment_lesion`` (or the
``LesionSegmenter`` transform) turns an image and its mask into the classifier's input.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use (PEP 562): the runtime imports ``seg.apply`` to run a segmenter
# named in a card, and must not pull in the training code through this package.
_EXPORTS = {
    "LesionSegmenter": "apply", "segment_lesion": "apply",
    "SegAugment": "data", "SegDataset": "data", "load_mask": "data", "load_pair": "data",
    "load_segmenter": "infer", "predict_mask": "infer",
    "SegConfig": "train", "load_seg_recipe": "train", "mask_scores": "train", "train_segmenter": "train",
    "AttentionGate": "unet", "AttentionUNet": "unet",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AttentionGate",
    "AttentionUNet",
    "LesionSegmenter",
    "SegAugment",
    "SegConfig",
    "SegDataset",
    "load_mask",
    "load_pair",
    "load_seg_recipe",
    "load_segmenter",
    "mask_scores",
    "predict_mask",
    "segment_lesion",
    "train_segmenter",
]
