"""One runtime for every artifact format: ``load(path)`` → a ``Predictor``.

Backends register the file suffixes they open, the optional extra they need, and how they read
and embed the card. The gate, the bench, ``edgederm predict`` and ``edgederm evaluate`` all go
through here, so every format is preprocessed by the same ``PreprocessSpec`` code path.
"""

from __future__ import annotations

from .base import Predictor
from .registry import BACKENDS, Backend, backend_for, load, read_embedded_card, register_backend

# Built-in backends register themselves on import; each imports its heavy runtime lazily.
from . import torch_backend as _torch_backend  # noqa: F401,E402
from . import onnx_backend as _onnx_backend  # noqa: F401,E402
from . import openvino_backend as _openvino_backend  # noqa: F401,E402
from . import tflite_backend as _tflite_backend  # noqa: F401,E402

__all__ = ["BACKENDS", "Backend", "Predictor", "backend_for", "load", "read_embedded_card", "register_backend"]

# The TensorRT engine backend lives with its builder (edgederm.export.tensorrt); importing it
# registers ".engine" so predict/evaluate/bench open engines like any other artifact.
from ..export import tensorrt as _tensorrt_backend  # noqa: F401,E402
