"""The card inside an ExecuTorch program (``.pte``): a constant method ``edgederm_card``.

The exporter lowers the model with ``constant_methods={"edgederm_card": <card JSON>}``: a method
with no inputs that returns the string, so every ExecuTorch runtime (Python, C++, Android, iOS)
reads it the same way, ``program.load_method("edgederm_card").execute([])``. Replacing the card
after the gate rewrites that string in the program flatbuffer with ExecuTorch's own serializer
(the weights and the XNNPACK delegate blobs are copied unchanged; checked by
``tests/test_executorch.py`` with outputs bit-identical before and after).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ...errors import EdgedermError
from ...fsutil import atomic_path

CARD_METHOD = "edgederm_card"


def unreadable(path: Path, e: BaseException) -> EdgedermError:
    # ExecuTorch reports every load failure as RuntimeError("... error: 0x:NN"); keep its last line.
    reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:160]
    return EdgedermError(f"{path}: not a readable ExecuTorch program ({reason})")


def load_program(path: Path) -> Any:
    """The program loaded from bytes (not mmap: the file may be replaced while in use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning on import
        import torch  # noqa: F401  (the pybindings link libtorch: import it first)  # noqa
        from executorch.runtime import Runtime

    data = Path(path).read_bytes()
    try:
        return Runtime.get().load_program(data)
    except RuntimeError as e:
        raise unreadable(Path(path), e) from None


def read_card_text(path: Path) -> str | None:
    program = load_program(path)
    if CARD_METHOD not in set(program.method_names):
        return None
    try:
        out = program.load_method(CARD_METHOD).execute([])
    except RuntimeError as e:
        raise unreadable(Path(path), e) from None
    if len(out) != 1 or not isinstance(out[0], str):
        raise EdgedermError(f"{path}: its {CARD_METHOD} method does not return one string")
    return out[0]


def write_card_text(path: Path, text: str) -> None:
    """Replace the string the ``edgederm_card`` method returns (the method must exist: edgederm's
    exporter always creates it), atomically."""
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    path = Path(path)
    try:
        pte = deserialize_pte_binary(path.read_bytes())
    except Exception as e:  # flatbuffer parse errors of a truncated or foreign file
        raise unreadable(path, e) from None
    plans = [p for p in pte.program.execution_plan if p.name == CARD_METHOD]
    if not plans or len(plans[0].values) != 1 or not hasattr(plans[0].values[0].val, "string_val"):
        raise EdgedermError(f"{path}: no {CARD_METHOD} string method to hold the card (export it with edgederm)")
    plans[0].values[0].val.string_val = text
    # Delegate blobs go back into segments, as to_executorch() wrote them.
    data = bytes(serialize_pte_binary(pte, extract_delegate_segments=True))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
