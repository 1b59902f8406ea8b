"""One progress bar for long per-image work (predict, evaluate): done/total, images/s, ETA on stderr.

Shown when there are more than a handful of items and stderr is a terminal, or when forced
(``--progress``); never on stdout, so piped results stay clean. Log records emitted while the bar
is shown are written above it instead of through it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["HANDFUL", "progress_enabled", "progress_bar"]

#: Up to this many items finish before a bar would be worth reading: no bar by default.
HANDFUL = 8

_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"


def progress_enabled(total: int, force: bool | None = None) -> bool:
    """``force`` True/False decides; None: more than ``HANDFUL`` items and stderr is a TTY."""
    if force is not None:
        return force
    return total > HANDFUL and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(total: int, desc: str, *, force: bool | None = None, unit: str = "img", initial: int = 0,
                 leave: bool = True) -> Iterator[tqdm]:
    """A tqdm bar (disabled where ``progress_enabled`` says so); ``bar.update(n)`` as work is done.

    ``initial``: items already done before this run (a resumed predict); the rate and ETA count
    only the items of this run. ``leave``: keep the final bar (done/total, rate) on screen.
    """
    enabled = progress_enabled(total - initial, force)
    tty = sys.stderr.isatty()
    # Off a terminal (forced, e.g. into a log file) every redraw stays in the file: keep them rare.
    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
               bar_format=_FORMAT, mininterval=0.2 if tty else 5.0, dynamic_ncols=True, leave=leave)
    try:
        if enabled and tty:  # off a terminal, redrawing the bar under each log line is only noise
            with logging_redirect_tqdm():
                yield bar
        else:
            yield bar
    finally:
        bar.close()
