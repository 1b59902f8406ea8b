"""OpenVINO IR (``.xml`` + ``.bin``) through OpenVINO Runtime; the card lives in the IR's ``rt_info``.

The card is stored under ``rt_info/edgederm/card`` (a JSON string attribute of the ``.xml``).
Embedding rewrites both files of the IR: they are saved into a temporary folder next to the
model and moved into place ``.bin`` first, then ``.xml`` (each move is atomic; the IR names its
weights file implicitly after the ``.xml``, so the pair cannot be swapped in one step).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ArtifactCard
from ..errors import CardError, EdgedermError
from .base import Predictor
from .registry import Backend, register_backend, short_reason

log = logging.getLogger(__name__)

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


def _read_model(path: Path) -> Any:
    import openvino as ov

    if not ir_bin_path(path).exists():
        raise EdgedermError(f"{path}: the IR weights file {ir_bin_path(path).name} is missing next to it")
    try:
        return ov.Core().read_model(str(path))
    except RuntimeError as e:  # malformed XML, a .bin shorter than the weights it should hold
        raise EdgedermError(f"{path}: not a readable OpenVINO IR file ({short_reason(e)})") from None


class OpenVinoPredictor(Predictor):
    format = "openvino"

    def __init__(
        self,
        path: Path,
        card: ArtifactCard,
        *,
        threads: int | None = None,
        device: str = "cpu",
        execution_mode: str = "ACCURACY",
        batch: int | None = None,
    ) -> None:
        import openvino as ov

        super().__init__(path, card)
        core = ov.Core()
        model = _read_model(Path(path))
        if batch is not None:
            # A known batch size compiles a static-shape model: measured 3-8 % faster than the
            # IR's dynamic batch for batch-1 latency (docs/bench-fidelity.md). Other batch sizes
            # still work, in chunks of `batch`.
            if int(batch) < 1:
                raise EdgedermError(f"batch must be at least 1, got {batch}")
            shape = model.input(0).get_partial_shape()
            shape[0] = int(batch)
            model.reshape({model.input(0): shape})
        config: dict[str, Any] = {
            # ACCURACY keeps floating-point layers in FP32: on CPUs with native BF16 the default
            # PERFORMANCE mode would silently run them in BF16, which the gate never measured.
            "EXECUTION_MODE_HINT": execution_mode.upper(),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.device = "CPU" if device.lower() == "cpu" else device.upper()
        self.compiled = core.compile_model(model, self.device, config)
        self.request = self.compiled.create_infer_request()
        inp = self.compiled.input(0)
        batch_dim = inp.get_partial_shape()[0]
        # A static-batch IR (rare: reshape to dynamic failed at export) is run in chunks of its batch.
        self._static_batch = None if batch_dim.is_dynamic else int(batch_dim.get_length())
        self._dtype = np.dtype(inp.get_element_type().to_dtype())

    def forward(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self._dtype)
        n = self._static_batch
        if n is None or x.shape[0] == n:
            return self._run(x)
        outs = []
        for i in range(0, x.shape[0], n):
            chunk = x[i : i + n]
            pad = n - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(self._run(chunk)[: n - pad])
        return np.concatenate(outs)

    def _run(self, x: np.ndarray) -> np.ndarray:
        # share_inputs: OpenVINO reads the (contiguous) array in place instead of copying it
        # into a new tensor on every call.
        self.request.infer({0: x}, share_inputs=True)
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def read_openvino_card(path: Path) -> ArtifactCard | None:
    model = _read_model(Path(path))
    if not model.has_rt_info(RT_INFO_PATH):
        return None
    value = model.get_rt_info(RT_INFO_PATH)
    text = value.astype(str) if hasattr(value, "astype") else str(value)
    if not text:
        raise CardError(f"{path}: empty embedded card in rt_info")
    return ArtifactCard.from_json(text, source=f"{path} (embedded)")


def embed_openvino_card(path: Path, card: ArtifactCard) -> None:
    """Write the card into the IR's ``rt_info`` (replacing an older one); rewrites .xml and .bin."""
    path = Path(path)
    model = _read_model(path)
    model.set_rt_info(card.to_json(), RT_INFO_PATH)
    # compress_to_fp16=False: keep every constant exactly as it is (FP16 stays FP16, FP32 stays FP32).
    save_ir_atomic(model, path, compress_to_fp16=False)


register_backend(
    Backend(
        name="openvino",
        suffixes=(".xml",),
        open=OpenVinoPredictor,
        read_card=read_openvino_card,
        embed_card=embed_openvino_card,
        extra="openvino",
        module="openvino",
        batch_option=True,
    )
)
