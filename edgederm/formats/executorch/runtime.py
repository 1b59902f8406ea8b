"""ExecuTorch programs (``.pte``) through ExecuTorch's Python runtime (XNNPACK on CPUs).

The program is exported at batch 1 (a dynamic batch does not lower reliably through the XNNPACK
partitioner in ExecuTorch 1.5), so a batch runs image by image. The thread pool is process-wide
in ExecuTorch and can only be sized through an experimental call, before any program runs: a
``threads`` option is honoured the first time a predictor is made in a process (the bench
measures every configuration in a fresh process), and logged when it cannot be.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import EdgedermError
from ...runtime.base import Predictor
from .metadata import load_program, unreadable

if TYPE_CHECKING:
    from ...card import ArtifactCard

log = logging.getLogger(__name__)
_threads_set: int | None = None


def _set_threads(n: int) -> None:
    global _threads_set
    from executorch.extension.pybindings import portable_lib

    if _threads_set == n or int(portable_lib._threadpool_get_thread_count()) == n:
        _threads_set = n
        return
    if _threads_set is not None:
        log.warning("ExecuTorch's thread pool is already %d threads in this process; %d ignored", _threads_set, n)
        return
    portable_lib._unsafe_reset_threadpool(int(n))
    _threads_set = n


class ExecuTorchPredictor(Predictor):
    format = "executorch"

    def __init__(self, path: Path, card: "ArtifactCard", *, threads: int | None = None, device: str = "cpu") -> None:
        super().__init__(path, card)
        if device != "cpu":
            raise EdgedermError(f"{path}: ExecuTorch artifacts run on the CPU here (XNNPACK), not {device!r}")
        if threads:
            _set_threads(int(threads))
        self.program = load_program(Path(path))
        try:
            self.method = self.program.load_method("forward")
        except RuntimeError as e:
            raise unreadable(Path(path), e) from None
        meta = self.method.metadata
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise EdgedermError(f"{path}: expected one input and one output, found {meta.num_inputs()} and {meta.num_outputs()}")
        self.input_shape = tuple(int(d) for d in meta.input_tensor_meta(0).sizes())

    def forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = np.ascontiguousarray(batch, dtype=np.float32)
        step = self.input_shape[0]
        outs = [self.method.execute([torch.from_numpy(x[i : i + step])])[0].numpy() for i in range(0, len(x), step)]
        return np.concatenate(outs).astype(np.float32, copy=False)
