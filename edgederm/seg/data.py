"""(image, lesion mask) pairs for segmentation training and evaluation.

Geometry is applied to the image and its mask *as one tensor*: the mask rides along as a fourth
channel through the same random resized crop, flips and rotation, with the same bilinear
interpolation, and is thresholded at 0.5 afterwards. Image and mask therefore cannot drift apart
(no separate random draws, no nearest-vs-bilinear half-pixel offset). Colour jitter touches the
three image channels only.

Evaluation items are exactly what inference sees: the card's ``PreprocessSpec`` (stretch to a
square, Pillow's antialiased bilinear resize, ImageNet normalisation), with the mask resized by the
same filter and thresholded.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.images import load_image
from ..data.records import Record
from ..errors import DataError
from ..preprocess import PreprocessSpec, decode_size

log = logging.getLogger(__name__)

__all__ = ["SegAugment", "SegDataset", "load_mask", "load_pair", "seg_spec", "image_to_tensor", "resize_mask"]


def seg_spec(size: int) -> PreprocessSpec:
    """The preprocessing of a segmenter: stretch to ``size`` x ``size`` (exactly invertible, so a
    predicted mask maps back onto every original pixel), bilinear, ImageNet normalisation."""
    return PreprocessSpec(input_size=(size, size), resize="stretch", interpolation="bilinear")


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to ``size`` = (width, height) with the image's bilinear filter, then
    threshold at 0.5 (nearest-neighbour would shift the boundary by up to half a source pixel)."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask.astype(bool, copy=True)
    f = Image.fromarray(mask.astype(np.float32), mode="F")
    out = np.asarray(f.resize(tuple(size), Image.Resampling.BILINEAR, reducing_gap=None))
    return out >= 0.5


def load_mask(ref: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A lesion mask as a boolean HxW array (pixels brighter than mid-grey are lesion).

    ``size`` = the (width, height) of its image. A mask of another size with the same aspect ratio
    (e.g. next to a JPEG decoded at reduced scale) is resized to it; another aspect ratio means the
    mask does not belong to the image, a ``DataError``.
    """
    rgb = np.asarray(load_image(ref), dtype=np.uint8)
    mask = rgb.mean(axis=2) > 127.5  # binarise: 0/255 masks, and JPEG-ish noise around the edge
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        w, h = size
        mh, mw = mask.shape
        if abs(mw / mh - w / h) > 0.02 * (w / h):
            raise DataError(f"{ref}: mask is {mw}x{mh} but its image is {w}x{h} (different aspect ratio)")
        mask = resize_mask(mask, (w, h))
    return mask


def load_pair(record: Record, *, decode_size: int | None = None) -> tuple[Image.Image, np.ndarray]:
    """The record's RGB image and its boolean mask at the image's size."""
    if not record.mask_ref:
        raise DataError(f"{record.image_id}: no lesion mask (the data set must provide mask_ref, e.g. PH2)")
    img = load_image(record.ref, decode_size=decode_size)
    return img, load_mask(record.mask_ref, img.size)


def image_to_tensor(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """One RGB image -> the 3xHxW float32 input of ``spec`` (the inference path)."""
    return torch.from_numpy(np.ascontiguousarray(spec.finalize(spec.to_float_hwc(img.convert("RGB")))))


class SegAugment:
    """Paired augmentation: random resized crop to ``size`` x ``size``, flips, a rotation by any
    angle, then colour jitter on the image only. Input and output: float tensors in [0, 1],
    image 3xHxW and mask 1xHxW; the returned mask is exactly 0/1.

    Dermoscopy has no canonical orientation, so all flips and rotations are label-preserving;
    rotated-in corners are black, like the dermoscope's own vignette, and background in the mask.
    Random draws use torch's global generator (seeded by the trainer).
    """

    def __init__(
        self,
        size: int,
        *,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        rotate_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.15, 0.02),
    ) -> None:
        from torchvision import transforms as T

        self.size = int(size)
        self.scale, self.ratio, self.rotate_p = scale, ratio, rotate_p
        self.jitter = T.ColorJitter(*jitter) if any(jitter) else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import transforms as T
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        stack = torch.cat([image, mask.to(image.dtype)], dim=0)
        i, j, h, w = T.RandomResizedCrop.get_params(stack, list(self.scale), list(self.ratio))
        stack = TF.resized_crop(stack, i, j, h, w, [self.size, self.size],
                                interpolation=InterpolationMode.BILINEAR, antialias=True)
        if torch.rand(()) < 0.5:
            stack = TF.hflip(stack)
        if torch.rand(()) < 0.5:
            stack = TF.vflip(stack)
        if torch.rand(()) < self.rotate_p:
            angle = float(torch.empty(()).uniform_(-180.0, 180.0))
            stack = TF.rotate(stack, angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0] * stack.shape[0])
        img, m = stack[:3].clamp_(0.0, 1.0), (stack[3:] >= 0.5).to(image.dtype)
        if self.jitter is not None:
            img = self.jitter(img)
        return img, m


class SegDataset(Dataset):
    """(image, mask) pairs: image 3xSxS float32 (normalised by ``seg_spec(size)``), mask 1xSxS
    float32 in {0, 1}.

    Images and masks are decoded once and kept in memory (PH2 is 200 images; on 2 cores JPEG
    decoding every epoch would cost more than the augmentation). With ``augment`` the pair goes
    through ``SegAugment``; without, through the inference preprocessing, precomputed.
    """

    def __init__(
        self,
        records: Sequence[Record],
        size: int,
        *,
        augment: bool | SegAugment = False,
    ) -> None:
        self.records = list(records)
        self.size = int(size)
        self.spec = seg_spec(self.size)
        self.augment: SegAugment | None = (
            augment if isinstance(augment, SegAugment) else SegAugment(self.size) if augment else None
        )
        self._mean = torch.tensor(self.spec.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.spec.std, dtype=torch.float32).view(3, 1, 1)
        # Decode at reduced scale as the spec allows: resize quality kept, memory bounded.
        size = decode_size(self.spec)
        self._items: list[tuple[torch.Tensor, torch.Tensor]] = []
        for rec in self.records:
            img, mask = load_pair(rec, decode_size=size)
            if self.augment is not None:
                img, mask = _shrink(img, mask, math.ceil(1.5 * self.size))
                x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # uint8, 3xHxW
                m = torch.from_numpy(mask.copy())[None]  # bool, 1xHxW
            else:
                x = image_to_tensor(img, self.spec)
                m = torch.from_numpy(resize_mask(mask, (self.size, self.size)))[None]
            self._items.append((x, m))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, m = self._items[i]
        if self.augment is None:
            return x, m.float()
        img, mask = self.augment(x.float() / 255.0, m.float())
        return (img - self._mean) / self._std, mask


def _shrink(img: Image.Image, mask: np.ndarray, short: int) -> tuple[Image.Image, np.ndarray]:
    """Downscale so the short side is ``short`` (never up): the crop's source keeps enough pixels
    for ``size`` output while each augmentation touches ~4x fewer."""
    w, h = img.size
    s = short / min(w, h)
    if s >= 1.0:
        return img, mask
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=None), resize_mask(mask, size)
