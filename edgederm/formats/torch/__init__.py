"""The torch artifact format (see edgederm.formats.table for its row)."""
