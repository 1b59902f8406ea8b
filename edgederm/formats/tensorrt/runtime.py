"""TensorRT engines (``.engine``/``.plan``) on the GPU, I/O through PyTorch CUDA tensors.

An engine has no metadata section: the card is its ``.card.json`` sidecar.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import EdgedermError
from ...runtime.base import Predictor

if TYPE_CHECKING:
    from ...card import ArtifactCard


class TensorRTPredictor(Predictor):
    """A serialized TensorRT engine on the GPU (I/O through PyTorch CUDA tensors)."""

    format = "tensorrt"

    def __init__(self, path: Path, card: "ArtifactCard", *, device: str = "cuda", threads: int | None = None) -> None:
        import tensorrt as trt
        import torch

        super().__init__(path, card)
        if not torch.cuda.is_available():
            raise EdgedermError(f"{path}: a TensorRT engine needs a CUDA device; none is visible to PyTorch")
        self._torch = torch
        self.device = torch.device(device if device.startswith("cuda") else "cuda")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EdgedermError(f"{path}: TensorRT cannot load this engine (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        self.input = next(n for n in names if modes[n] == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if modes[n] == trt.TensorIOMode.OUTPUT)
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[2][0])
        self.stream = torch.cuda.Stream(device=self.device)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        outs = []
        for start in range(0, len(batch), self.max_batch):
            x = torch.from_numpy(np.ascontiguousarray(batch[start : start + self.max_batch], dtype=np.float32)).to(self.device)
            self.context.set_input_shape(self.input, tuple(x.shape))
            y = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(self.input, int(x.data_ptr()))
            self.context.set_tensor_address(self.output, int(y.data_ptr()))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EdgedermError(f"{self.path}: TensorRT execution failed")
            self.stream.synchronize()
            outs.append(y.cpu().numpy())
        return np.concatenate(outs)
