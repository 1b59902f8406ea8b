"""edgederm: dermoscopy classifiers on edge devices — train, distil, export, gate, bench."""

__version__ = "0.1.0"
