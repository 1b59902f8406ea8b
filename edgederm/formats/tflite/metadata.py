"""The card inside a TFLite flatbuffer: an entry of the model's ``metadata`` table.

The entry is named ``edgederm.card`` and points at a buffer holding the card's JSON. It is
written with the flatbuffer schema and tools that ship inside ``ai-edge-litert``
(``schema_py_generated``, ``tools.flatbuffer_utils``), so no extra package is needed;
tflite-support's ``MetadataPopulator`` uses the same mechanism for its own ``TFLITE_METADATA``
entry, and LiteRT ignores metadata it does not know.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EdgedermError, short_reason
from ...fsutil import atomic_path
from ..table import EMBED_KEY

_TFLITE_IDENTIFIER = b"TFL3"


def _model_bytes(path: Path) -> bytes:
    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise EdgedermError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    return data


def _text(name: bytes | str | None) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else (name or "")


def read_card_text(path: Path) -> str | None:
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
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgedermError(f"{path}: not a readable TFLite file (the {EMBED_KEY} metadata is not UTF-8)") from None


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


def write_card_text(path: Path, text: str) -> None:
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
    buf.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = EMBED_KEY
    entry.buffer = len(model.buffers) - 1
    metadata.append(entry)
    model.metadata = metadata
    with atomic_path(path) as tmp:
        flatbuffer_utils.write_model(model, str(tmp))
