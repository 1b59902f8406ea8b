"""Quantization beyond a converter's post-training pass (``qat``: quantization-aware fine-tuning)."""
