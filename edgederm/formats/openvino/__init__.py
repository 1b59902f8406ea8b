"""The openvino artifact format (see edgederm.formats.table for its row)."""
