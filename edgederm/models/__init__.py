"""Model registry and architectures (see ``registry.py``)."""

from .registry import MODELS, ModelSpec, create_model, get_model_spec, list_models, register_model

__all__ = ["MODELS", "ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]
