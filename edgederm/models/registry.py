"""The model registry: one table drives the CLI, validation, docs and parametrized tests.

Modelled on timm's ``register_model``: a decorator registers a builder under a unique name with
what the rest of the pipeline needs to know about it (native input size, the Grad-CAM target
layer, the family). ``create_model`` is the only way models are built, so a checkpoint that
records ``(name, num_classes, kwargs)`` can always be rebuilt.

Weights are explicit: ``pretrained=True`` asks timm for its pretrained weights (needs the hub),
``weights=PATH`` loads a local state dict, and neither means random initialisation — a choice
the caller must make, never a silent fallback when a download fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import EdgedermError
from ..preprocess import PreprocessSpec, spec_for_size

log = logging.getLogger(__name__)

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Builder
    input_size: int
    target_layer: str  # module path for Grad-CAM, e.g. "layer4"
    family: str = "cnn"
    description: str = ""
    pretrained_source: str = "timm"
    # PreprocessSpec overrides the weights expect (e.g. mean/std of a non-ImageNet convention).
    preprocess: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    def preprocess_spec(self, input_size: int | None = None) -> PreprocessSpec:
        """The typed preprocessing this model's weights expect, at ``input_size`` (default: its
        native size): like timm's pretrained cfg, it travels with the model into the card."""
        return spec_for_size(int(input_size or self.input_size), **self.preprocess)


MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    input_size: int,
    target_layer: str,
    family: str = "cnn",
    description: str = "",
    pretrained_source: str = "timm",
    preprocess: dict[str, Any] | None = None,
    **defaults: Any,
) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes, pretrained, **kw) -> nn.Module`` under ``name``."""

    def deco(fn: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = ModelSpec(
            name=name,
            builder=fn,
            input_size=input_size,
            target_layer=target_layer,
            family=family,
            description=description or _first_line(fn.__doc__),
            pretrained_source=pretrained_source,
            preprocess=dict(preprocess or {}),
            defaults=dict(defaults),
        )
        return fn

    return deco


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def list_models() -> list[str]:
    _ensure_builtin()
    return sorted(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    _ensure_builtin()
    if name not in MODELS:
        import difflib

        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EdgedermError(f"unknown model {name!r}{hint}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; ``weights`` is a local state dict (``weights_only`` load)."""
    spec = get_model_spec(name)
    kw = {**spec.defaults, **kwargs}
    try:
        model = spec.builder(num_classes=num_classes, pretrained=pretrained and weights is None, **kw)
    except (OSError, RuntimeError) as e:
        if pretrained and weights is None and _looks_offline(e):
            raise EdgedermError(
                f"could not download pretrained weights for {name!r} ({type(e).__name__}); "
                "pass --weights PATH to a local file, or choose --no-pretrained explicitly"
            ) from None
        raise
    if weights is not None:
        load_weights(model, weights, name=name)
    return model


def load_weights(model: nn.Module, path: str | Path, *, name: str = "model") -> None:
    """Load a local state dict; the classifier may differ in size (it is then left new)."""
    p = Path(path)
    if not p.exists():
        raise EdgedermError(f"weights file not found: {p}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    missing = sorted(set(own) - set(usable))
    if not usable:
        raise EdgedermError(f"{p}: no tensor matches {name!r}; is it the right architecture?")
    model.load_state_dict(usable, strict=False)
    log.info("%s: loaded %d tensors from %s (%d skipped, %d left new)", name, len(usable), p, len(skipped), len(missing))


def _looks_offline(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(s in text for s in ("connection", "resolve", "offline", "network", "huggingface", "urlopen", "timed out"))


_BUILTIN_LOADED = False


def _ensure_builtin() -> None:
    # Import the modules whose decorators fill the table (lazily: importing timm takes ~1 s).
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        from . import zoo  # noqa: F401
        from . import papers  # noqa: F401
