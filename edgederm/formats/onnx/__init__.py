"""The onnx artifact format (see edgederm.formats.table for its row)."""
