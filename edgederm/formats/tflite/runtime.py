"""LiteRT / TensorFlow Lite models (``.tflite``) through ai-edge-litert.

Models whose input/output tensors are integer (full-integer quantization) are fed and read in
float: the predictor quantizes/dequantizes with each tensor's scale and zero point, so the card's
``PreprocessSpec`` stays NCHW float32 for every precision.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import EdgedermError, short_reason
from ...runtime.base import Predictor

if TYPE_CHECKING:
    from ...card import ArtifactCard

log = logging.getLogger(__name__)


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=dtype)
    scale, zero_point = detail["quantization"]
    if not scale:
        raise EdgedermError(f"input tensor {detail['name']!r} is {dtype} without quantization parameters")
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return np.asarray(y, dtype=np.float32)
    scale, zero_point = detail["quantization"]
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


class TFLitePredictor(Predictor):
    format = "tflite"

    def __init__(self, path: Path, card: "ArtifactCard", *, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        super().__init__(path, card)
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=int(threads) if threads else None)
        except (ValueError, RuntimeError) as e:  # LiteRT's flatbuffer verifier, op resolution
            raise EdgedermError(f"{path}: not a readable TFLite file ({short_reason(e)})") from None
        self._in = self.interpreter.get_input_details()[0]
        self._base_shape = [int(d) for d in self._in["shape"]]
        self._batch = self._base_shape[0]
        self._resizable = True  # until a resize fails: then run in chunks of the converted batch
        self.interpreter.allocate_tensors()

    @property
    def input_quantization(self) -> tuple[float, int] | None:
        """(scale, zero_point) when the model takes integer input, else None."""
        return None if np.dtype(self._in["dtype"]).kind == "f" else tuple(self._in["quantization"])  # type: ignore[return-value]

    def _set_batch(self, n: int) -> bool:
        if n == self._batch:
            return True
        if not self._resizable:
            return False
        try:
            self.interpreter.resize_tensor_input(self._in["index"], [n, *self._base_shape[1:]])
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as e:
            log.info("%s: cannot resize the input to batch %d (%s); running in chunks", self.path.name, n, e)
            self._resizable = False
            self.interpreter.resize_tensor_input(self._in["index"], self._base_shape)
            self.interpreter.allocate_tensors()
            self._batch = self._base_shape[0]
            return False
        self._batch = n
        return True

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in["index"], _quantize(x, self._in))
        self.interpreter.invoke()
        out = self.interpreter.get_output_details()[0]
        return _dequantize(self.interpreter.get_tensor(out["index"]), out)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if self._set_batch(n):
            y = self._invoke(batch)
            if y.shape[0] == n:
                return y
            # An op with a baked-in batch size accepted the resize but produced another batch.
            log.info("%s: output batch %d != input batch %d; running in chunks", self.path.name, y.shape[0], n)
            self._resizable = False
            self.interpreter.resize_tensor_input(self._in["index"], self._base_shape)
            self.interpreter.allocate_tensors()
            self._batch = self._base_shape[0]
        b = self._batch
        outs = []
        for i in range(0, n, b):
            chunk = batch[i : i + b]
            pad = b - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(self._invoke(chunk)[: b - pad])
        return np.concatenate(outs)
