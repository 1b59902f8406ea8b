"""ONNX models through ONNX Runtime; the card lives in the model's ``metadata_props``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..card import EMBED_KEY, ArtifactCard
from ..errors import EdgedermError
from ..fsutil import atomic_path
from .base import Predictor
from .registry import Backend, register_backend, short_reason


def _unreadable(path: Path, e: BaseException) -> EdgedermError:
    return EdgedermError(f"{path}: not a readable ONNX file ({short_reason(e)})")


class OnnxPredictor(Predictor):
    format = "onnx"

    def __init__(
        self,
        path: Path,
        card: ArtifactCard,
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
            raise _unreadable(path, e) from None
        self.input_name = self.session.get_inputs()[0].name
        self._dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(
            self.session.get_inputs()[0].type, np.float32
        )

    def forward(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=self._dtype)})[0]
        return np.asarray(out, dtype=np.float32)


def read_onnx_card(path: Path) -> ArtifactCard | None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError on a truncated or foreign file, and friends
        raise _unreadable(path, e) from None
    for prop in model.metadata_props:
        if prop.key == EMBED_KEY:
            return ArtifactCard.from_json(prop.value, source=f"{path} (embedded)")
    return None


def embed_onnx_card(path: Path, card: ArtifactCard) -> None:
    """Write the card into ``metadata_props`` (replacing an older one), atomically."""
    import onnx

    model = onnx.load(str(path))
    for prop in list(model.metadata_props):
        if prop.key == EMBED_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = EMBED_KEY, card.to_json()
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


register_backend(
    Backend(
        name="onnx",
        suffixes=(".onnx",),
        open=OnnxPredictor,
        read_card=read_onnx_card,
        embed_card=embed_onnx_card,
        extra="onnx",
        module="onnxruntime",
    )
)
