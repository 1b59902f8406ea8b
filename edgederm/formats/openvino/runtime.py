"""OpenVINO IR (``.xml`` + ``.bin``) through OpenVINO Runtime."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import EdgedermError
from ...runtime.base import Predictor
from .metadata import read_model

if TYPE_CHECKING:
    from ...card import ArtifactCard

log = logging.getLogger(__name__)


class OpenVinoPredictor(Predictor):
    format = "openvino"

    def __init__(
        self,
        path: Path,
        card: "ArtifactCard",
        *,
        threads: int | None = None,
        device: str = "cpu",
        execution_mode: str = "ACCURACY",
        batch: int | None = None,
    ) -> None:
        import openvino as ov

        super().__init__(path, card)
        core = ov.Core()
        model = read_model(Path(path))
        if batch is not None:
            # A known batch size compiles a static-shape model: measured 3-8 % faster than the
            # IR's dynamic batch for batch-1 latency (docs/bench-fidelity.md). Other batch sizes
            # still work, in chunks of `batch`.
            if int(batch) < 1:
                raise EdgedermError(f"batch must be at least 1, got {batch}")
            shape = model.input(0).get_partial_shape()
            shape[0] = int(batch)
            model.reshape({model.input(0): shape})
        config: dict[str, Any] = {
            # ACCURACY keeps floating-point layers in FP32: on CPUs with native BF16 the default
            # PERFORMANCE mode would silently run them in BF16, which the gate never measured.
            "EXECUTION_MODE_HINT": execution_mode.upper(),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.device = "CPU" if device.lower() == "cpu" else device.upper()
        self.compiled = core.compile_model(model, self.device, config)
        self.request = self.compiled.create_infer_request()
        inp = self.compiled.input(0)
        batch_dim = inp.get_partial_shape()[0]
        # A static-batch IR (rare: reshape to dynamic failed at export) is run in chunks of its batch.
        self._static_batch = None if batch_dim.is_dynamic else int(batch_dim.get_length())
        self._dtype = np.dtype(inp.get_element_type().to_dtype())

    def forward(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self._dtype)
        n = self._static_batch
        if n is None or x.shape[0] == n:
            return self._run(x)
        outs = []
        for i in range(0, x.shape[0], n):
            chunk = x[i : i + n]
            pad = n - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(self._run(chunk)[: n - pad])
        return np.concatenate(outs)

    def _run(self, x: np.ndarray) -> np.ndarray:
        # share_inputs: OpenVINO reads the (contiguous) array in place instead of copying it
        # into a new tensor on every call.
        self.request.infer({0: x}, share_inputs=True)
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)
