"""ONNX models through ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...runtime.base import Predictor
from .metadata import unreadable

if TYPE_CHECKING:
    from ...card import ArtifactCard


class OnnxPredictor(Predictor):
    format = "onnx"

    def __init__(
        self,
        path: Path,
        card: "ArtifactCard",
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        device: str = "cpu",
    ) -> None:
        import onnxruntime as ort

        super().__init__(path, card)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        if providers is None:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:
            # ORT's own errors (InvalidProtobuf, InvalidGraph, Fail, ...) live in its pybind module;
            # anything else (a bad provider name, a bug) keeps its traceback.
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            raise unreadable(path, e) from None
        self.input_name = self.session.get_inputs()[0].name
        self._dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(
            self.session.get_inputs()[0].type, np.float32
        )

    def forward(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=self._dtype)})[0]
        return np.asarray(out, dtype=np.float32)
