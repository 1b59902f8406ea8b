"""The ExecuTorch artifact format (.pte, XNNPACK delegate); its row is in edgederm.formats.table."""
