"""LiteRT / TensorFlow Lite models (``.tflite``) through ai-edge-litert; the card is TFLite metadata.

The card is stored the way the TFLite schema provides for it: an entry of the model's
``metadata`` table (name ``edgederm.card``) pointing at a buffer that holds the card's JSON.
It is written with the flatbuffer schema and tools that ship inside ``ai-edge-litert``
(``schema_py_generated``, ``tools.flatbuffer_utils``), so no extra package is needed;
tflite-support's ``MetadataPopulator`` uses the same mechanism for its own ``TFLITE_METADATA``
entry, and LiteRT ignores metadata it does not know.

Models whose input/output tensors are integer (full-integer quantization) are fed and read in
float: the predictor quantizes/dequantizes with each tensor's scale and zero point, so the card's
``PreprocessSpec`` stays NCHW float32 for every precision.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..card import EMBED_KEY, ArtifactCard
from ..errors import EdgedermError
from ..fsutil import atomic_path
from .base import Predictor
from .registry import Backend, register_backend, short_reason

log = logging.getLogger(__name__)

_TFLITE_IDENTIFIER = b"TFL3"


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

    def __init__(self, path: Path, card: ArtifactCard, *, threads: int | None = None) -> None:
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


def _model_bytes(path: Path) -> bytes:
    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise EdgedermError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    return data


def _text(name: bytes | str | None) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else (name or "")


def read_tflite_card(path: Path) -> ArtifactCard | None:
    """The card from the model's ``metadata`` table, or None when it has none."""
    from ai_edge_litert import schema_py_generated as schema

    data = _model_bytes(path)
    try:
        raw = _metadata_entry(schema.Model.GetRootAs(data, 0), data, EMBED_KEY)
    except (struct.error, IndexError, ValueError, TypeError) as e:
        # The generated reader does not verify the flatbuffer: a truncated file fails on the
        # first offset past its end.
        raise EdgedermError(f"{path}: not a readable TFLite file ({type(e).__name__}: {short_reason(e)})") from None
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgedermError(f"{path}: not a readable TFLite file (the {EMBED_KEY} metadata is not UTF-8)") from None
    return ArtifactCard.from_json(text, source=f"{path} (embedded)")


def _metadata_entry(model: Any, data: bytes, name: str) -> bytes | None:
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        if _text(meta.Name()) != name:
            continue
        buf = model.Buffers(meta.Buffer())
        if buf.Offset() > 1:  # models over 2 GB keep buffers after the flatbuffer
            if buf.Offset() + buf.Size() > len(data):
                raise ValueError(f"metadata buffer ends at byte {buf.Offset() + buf.Size()} of {len(data)}")
            return data[buf.Offset() : buf.Offset() + buf.Size()]
        arr = buf.DataAsNumpy()  # the int 0 when the buffer has no data vector
        return arr.tobytes() if hasattr(arr, "tobytes") else b""
    return None


def embed_tflite_card(path: Path, card: ArtifactCard) -> None:
    """Write the card as the ``edgederm.card`` metadata entry (replacing an older one), atomically."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    path = Path(path)
    _model_bytes(path)
    model = flatbuffer_utils.read_model(str(path))
    metadata = []
    for m in model.metadata or []:
        if _text(m.name) == EMBED_KEY:
            model.buffers[m.buffer].data = None  # an older card: its buffer becomes an empty slot
        else:
            metadata.append(m)
    buf = schema.BufferT()
    buf.data = np.frombuffer(card.to_json().encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = EMBED_KEY
    entry.buffer = len(model.buffers) - 1
    metadata.append(entry)
    model.metadata = metadata
    with atomic_path(path) as tmp:
        flatbuffer_utils.write_model(model, str(tmp))


register_backend(
    Backend(
        name="tflite",
        suffixes=(".tflite",),
        open=TFLitePredictor,
        read_card=read_tflite_card,
        embed_card=embed_tflite_card,
        extra="tflite",
        module="ai_edge_litert",
    )
)
