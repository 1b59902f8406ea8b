"""The benchmark harness: how fast, on which device, at what accuracy.

``run_bench(artifacts, target, out, settings)`` measures every artifact x runtime x threads x batch
on a target (``local``, ``ssh://user@host[:port]``, ``adb[:serial]``) and appends one JSON line per
configuration to ``<out>/results.jsonl``; ``write_report(out)`` turns the folder into
``report.md``, ``report.html`` and ``plots/*.png`` (latency distributions, the latency-vs-BACC
Pareto plot from each artifact's card, thread scaling). The CLI is ``edgederm bench`` and
``edgederm bench-report`` (``edgederm.bench.cli.register``).
"""

from __future__ import annotations

from .harness import run_bench
from .report import write_report
from .store import ResultsStore, is_bench_folder
from .targets import TARGETS, Artifact, DeviceDropError, JobError, Settings, Target, load_artifact, make_target, register_target

__all__ = [
    "TARGETS",
    "Artifact",
    "DeviceDropError",
    "JobError",
    "ResultsStore",
    "Settings",
    "Target",
    "is_bench_folder",
    "load_artifact",
    "make_target",
    "register_target",
    "run_bench",
    "write_report",
]
