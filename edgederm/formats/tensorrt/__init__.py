"""The tensorrt artifact format (see edgederm.formats.table for its row)."""
