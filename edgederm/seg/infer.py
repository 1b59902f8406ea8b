"""Running a trained lesion segmenter: load its checkpoint, predict a mask.

Kept apart from ``seg.train`` so that inference (the runtime applies a segmenter named in a
classifier's card) imports no training code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..checkpoint import load_checkpoint
from ..errors import EdgedermError
from .data import image_to_tensor, seg_spec
from .unet import AttentionUNet

MODEL_NAME = "attention_unet"


def predict_mask(model: nn.Module, img: Image.Image, size: int) -> np.ndarray:
    """The lesion mask of ``img`` as a boolean HxW array at the image's own resolution.

    The image is stretched to ``size`` x ``size`` (the card's preprocessing); the logits are
    resized back to the original size bilinearly and thresholded at 0 (probability 0.5).
    """
    img = img.convert("RGB")
    x = image_to_tensor(img, seg_spec(size))[None]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(x)
            logits = F.interpolate(logits[:, :1], size=(img.height, img.width), mode="bilinear", align_corners=False)
    finally:
        model.train(was_training)
    return logits[0, 0].numpy() >= 0.0


def load_segmenter(path: str | Path) -> tuple[AttentionUNet, int]:
    """(model in eval mode, input size) from a segmentation checkpoint written by ``train_segmenter``."""
    members, card = load_checkpoint(path)
    if card.task != "segmentation":
        raise EdgedermError(f"{path}: a {card.task} checkpoint, not a segmentation model")
    m = members[0]
    if len(members) != 1 or m.name != MODEL_NAME:
        raise EdgedermError(f"{path}: expected one {MODEL_NAME!r} member, found {[x.name for x in members]}")
    try:
        model = AttentionUNet(out_ch=m.num_classes, **m.kwargs)
        model.load_state_dict(m.state_dict)
    except (TypeError, ValueError, RuntimeError) as e:
        raise EdgedermError(f"{path}: weights do not fit AttentionUNet({m.kwargs}) ({str(e).splitlines()[0][:160]})") from None
    size = card.preprocessing.height
    if card.preprocessing.width != size:
        raise EdgedermError(f"{path}: segmenter input must be square, card says {list(card.preprocessing.input_size)}")
    return model.eval(), size
