"""OpenVINO IR files (``.xml`` + ``.bin``): reading, atomic saving, and the card in ``rt_info``.

The card is stored under ``rt_info/edgederm/card`` (a JSON string attribute of the ``.xml``).
Embedding rewrites both files of the IR: they are saved into a temporary folder next to the
model and moved into place ``.bin`` first, then ``.xml`` (each move is atomic; the IR names its
weights file implicitly after the ``.xml``, so the pair cannot be swapped in one step).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...errors import CardError, EdgedermError, short_reason

RT_INFO_PATH = ["edgederm", "card"]


def ir_bin_path(xml: str | Path) -> Path:
    """The weights file that belongs to an IR ``.xml``."""
    return Path(xml).with_suffix(".bin")


def save_ir_atomic(model: Any, out_xml: str | Path, *, compress_to_fp16: bool) -> Path:
    """``ov.save_model`` into a temporary folder, then move ``.bin`` and ``.xml`` into place."""
    import openvino as ov

    out_xml = Path(out_xml)
    if out_xml.suffix != ".xml":
        raise EdgedermError(f"{out_xml}: an OpenVINO IR path must end in .xml")
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_xml.stem}.", suffix=".tmp", dir=out_xml.parent))
    try:
        tmp_xml = tmp_dir / out_xml.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        tmp_bin = ir_bin_path(tmp_xml)
        umask = os.umask(0)
        os.umask(umask)
        for f in (tmp_bin, tmp_xml):
            if f.exists():
                os.chmod(f, 0o666 & ~umask)
        if tmp_bin.exists():
            os.replace(tmp_bin, ir_bin_path(out_xml))
        os.replace(tmp_xml, out_xml)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_xml


def read_model(path: Path) -> Any:
    import openvino as ov

    if not ir_bin_path(path).exists():
        raise EdgedermError(f"{path}: the IR weights file {ir_bin_path(path).name} is missing next to it")
    try:
        return ov.Core().read_model(str(path))
    except RuntimeError as e:  # malformed XML, a .bin shorter than the weights it should hold
        raise EdgedermError(f"{path}: not a readable OpenVINO IR file ({short_reason(e)})") from None


def read_card_text(path: Path) -> str | None:
    model = read_model(Path(path))
    if not model.has_rt_info(RT_INFO_PATH):
        return None
    value = model.get_rt_info(RT_INFO_PATH)
    text = value.astype(str) if hasattr(value, "astype") else str(value)
    if not text:
        raise CardError(f"{path}: empty embedded card in rt_info")
    return text


def write_card_text(path: Path, text: str) -> None:
    """Write the card into the IR's ``rt_info`` (replacing an older one); rewrites .xml and .bin."""
    path = Path(path)
    model = read_model(path)
    model.set_rt_info(text, RT_INFO_PATH)
    # compress_to_fp16=False: keep every constant exactly as it is (FP16 stays FP16, FP32 stays FP32).
    save_ir_atomic(model, path, compress_to_fp16=False)
