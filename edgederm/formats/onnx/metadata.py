"""The card inside an ONNX file: a ``metadata_props`` entry (key ``edgederm.card``)."""

from __future__ import annotations

from pathlib import Path

from ...errors import EdgedermError, short_reason
from ...fsutil import atomic_path
from ..table import EMBED_KEY


def unreadable(path: Path, e: BaseException) -> EdgedermError:
    return EdgedermError(f"{path}: not a readable ONNX file ({short_reason(e)})")


def read_card_text(path: Path) -> str | None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError on a truncated or foreign file, and friends
        raise unreadable(path, e) from None
    for prop in model.metadata_props:
        if prop.key == EMBED_KEY:
            return str(prop.value)
    return None


def write_card_text(path: Path, text: str) -> None:
    """Write the card into ``metadata_props`` (replacing an older one), atomically."""
    import onnx

    model = onnx.load(str(path))
    for prop in list(model.metadata_props):
        if prop.key == EMBED_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = EMBED_KEY, text
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
