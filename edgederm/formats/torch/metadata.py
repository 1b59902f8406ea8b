"""The card inside an edgederm checkpoint (``.pt``): the payload's ``card`` JSON string.

The payload is read with ``torch.load(weights_only=True)``: plain tensors and containers only,
never pickled code (a malicious pickle is refused here, before anything else sees it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import EdgedermError

FORMAT = "edgederm.checkpoint"
FORMAT_VERSION = 1


def read_payload(path: str | Path) -> dict[str, Any]:
    """The checkpoint's payload dict; one-line error for anything that is not an edgederm checkpoint."""
    import torch

    path = Path(path)
    if not path.exists():
        raise EdgedermError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, non-edgederm objects
        raise EdgedermError(f"{path}: cannot be read as an edgederm checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgedermError(f"{path}: not an edgederm checkpoint (no '{FORMAT}' header)")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise EdgedermError(f"{path}: checkpoint format {payload['format_version']} is newer than this edgederm; upgrade")
    return payload


def read_card_text(path: Path) -> str | None:
    text = read_payload(path).get("card")
    return str(text) if text is not None else None
