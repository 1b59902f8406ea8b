"""Lesion segmentation: an Attention U-Net trained on lesion masks (PH2), and segment-then-classify.

``train_segmenter(load_seg_recipe("train/ph2-attention-unet.yaml"))`` trains and scores a
segmenter; ``load_segmenter`` + ``predict_mask`` run it; ``segment_lesion`` (or the
``LesionSegmenter`` transform) turns an image and its mask into the classifier's input.
"""

from __future__ import annotations

from .apply import LesionSegmenter, segment_lesion
from .data import SegAugment, SegDataset, load_mask, load_pair
from .train import SegConfig, load_seg_recipe, load_segmenter, mask_scores, predict_mask, train_segmenter
from .unet import AttentionGate, AttentionUNet

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
