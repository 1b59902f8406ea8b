"""What an ExecuTorch program computes in, as far as edgederm can tell.

The convolutions and linears of a ``.pte`` sit inside XNNPACK delegate blobs, which this module
does not parse. The exporter counts them on the lowered program just before serialising it
(``int8_conv_linear`` / ``float_conv_linear``, see ``export.py``): those counts are used, from
the build's record or, for a finished file, from the card embedded in it. Weight storage is not
read (``weight_bytes`` stays empty, so a program without INT8 ops reads as ``fp32``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..precision import OpCount


def count_ops(path: Path, info: Mapping[str, Any] | None = None) -> OpCount | None:
    """Op counts from the exporter's record (``info``) or the card embedded in ``path``."""
    rec: Mapping[str, Any] = info or {}
    if "int8_conv_linear" not in rec:
        from .metadata import read_card_text

        text = read_card_text(Path(path))
        rec = ((json.loads(text).get("artifact") or {}).get("exporter") or {}) if text else {}
    if "int8_conv_linear" not in rec:
        return None
    q, f = int(rec["int8_conv_linear"]), int(rec.get("float_conv_linear", 0))
    return OpCount(compute_ops=q + f, quantized_ops=q)
