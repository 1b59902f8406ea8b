"""Run reports: figures (``plots``), reading a run folder (``reading``), Markdown builders
(``formatting``) and ``report.md`` itself (``run``). See ``edgederm.report.run`` for what a run
folder holds and how the report reads it."""

from __future__ import annotations

from .formatting import SPLITS, metrics_table, per_class_table, thresholds_section
from .plots import (
    best_epoch,
    colours,
    figure,
    plot_confusion,
    plot_reliability,
    plot_roc,
    plot_training_curves,
    save_figure,
)
from .reading import Predictions, load_predictions
from .run import write_run_report

__all__ = [
    "SPLITS",
    "Predictions",
    "best_epoch",
    "colours",
    "figure",
    "load_predictions",
    "metrics_table",
    "per_class_table",
    "plot_confusion",
    "plot_reliability",
    "plot_roc",
    "plot_training_curves",
    "save_figure",
    "thresholds_section",
    "write_run_report",
]
