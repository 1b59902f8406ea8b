"""Artifact formats: one folder per format (``formats/<name>/``: its card reader, runtime backend
and exporter) and one table (``formats.table``) that everything else reads."""

from __future__ import annotations

from .table import (
    EMBED_KEY,
    FORMATS,
    Format,
    Option,
    Recipe,
    TargetSpec,
    artifact_suffixes,
    find_format,
    format_for,
    get_format,
    is_artifact,
    load_attr,
    read_card_text,
    register_format,
    write_card_text,
)

__all__ = [
    "EMBED_KEY", "FORMATS", "Format", "Option", "Recipe", "TargetSpec", "artifact_suffixes", "find_format",
    "format_for", "get_format", "is_artifact", "load_attr", "read_card_text", "register_format", "write_card_text",
]
