"""PyTorch datasets over a ``DatasetIndex``, using the card's preprocessing for evaluation."""

from __future__ import annotations

from typing import Callable, Mapping, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..preprocess import PreprocessSpec, decode_size
from .images import load_image
from .records import DatasetIndex


Augment = Union[Callable[[Image.Image], Image.Image], Mapping[int, Callable[[Image.Image], Image.Image]]]


class ImageDataset(Dataset):
    """(image tensor, label index) pairs.

    Training passes ``augment`` (a PIL → PIL transform applied before the spec's normalisation,
    or a mapping class index → transform for per-class augmentation tiers); evaluation passes none and gets exactly ``spec.apply``. ``cache=True`` keeps the decoded
    images in memory (small data sets, 2-core machines: JPEG decoding would dominate).
    """

    def __init__(
        self,
        index: DatasetIndex,
        spec: PreprocessSpec,
        *,
        augment: Augment | None = None,
        cache: bool = False,
        pre: Callable[[Image.Image], Image.Image] | None = None,
    ) -> None:
        self.index = index
        self.pre = pre  # e.g. segment-then-classify: applied once per decoded image (cached)
        self.spec = spec
        self.augment = augment
        self.targets = index.targets()
        self._cache: dict[int, Image.Image] | None = {} if cache else None
        # Decode as the runtime does for this spec (Predictor.decode_size): reduced scale unless
        # the spec says exact_decode or a segmenter crops (then every pixel).
        self._decode_size = decode_size(spec, segmenter=pre)

    def __len__(self) -> int:
        return len(self.index.records)

    def image(self, i: int) -> Image.Image:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        img = load_image(self.index.records[i].ref, decode_size=self._decode_size)
        if self.pre is not None:
            img = self.pre(img)
        if self._cache is not None:
            self._cache[i] = img
        return img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.image(i)
        if self.augment is not None:
            # The augmentation ends at the input size (e.g. a random resized crop).
            aug = self.augment[self.targets[i]] if isinstance(self.augment, Mapping) else self.augment
            img = aug(img)
            if img.size != (self.spec.width, self.spec.height):
                img = self.spec.geometric(img)
            x = self.spec.normalize(np.asarray(img.convert("RGB"), dtype=np.uint8))
        else:
            x = self.spec.normalize(np.asarray(self.spec.geometric(img), dtype=np.uint8))
        x = np.moveaxis(x, -1, 0)  # training always runs NCHW float32
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), self.targets[i]
