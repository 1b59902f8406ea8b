"""``python -m edgederm.seg RECIPE [--out DIR] ...``: train and score a lesion segmenter."""

from __future__ import annotations

from .train import main

if __name__ == "__main__":
    raise SystemExit(main())
