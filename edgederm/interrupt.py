"""Ctrl-C (SIGINT) and SIGTERM for the command line: stop cleanly at any stage.

``handling()`` (around ``edgederm.cli.main``) makes both signals raise ``Interrupted`` in the
main thread. ``Interrupted`` is a ``KeyboardInterrupt``, so everything that already cleans up on
Ctrl-C cleans up on SIGTERM too, and ``except Exception`` never swallows it: export removes its
temporary folder (the artifact is swapped in only after its gate passed), training keeps the
``last.pt`` of its last finished epoch for ``--resume``, ``edgederm run`` records the stage as
interrupted in ``pipeline.json``. ``main`` then prints one line and exits with 128 + the signal
number (130 for SIGINT, 143 for SIGTERM).

A signal the parent set to ignored is left ignored: a command started in the background by a
non-interactive shell (``edgederm export ... &`` in a script) or under ``nohup`` inherits SIGINT
ignored, and the user asked for exactly that. A second signal while the first is being cleaned up
after ends the process at once (a later export removes what is left; see ``export.run._recover``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM arrived; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)

    @property
    def message(self) -> str:
        how = "" if self.signum == signal.SIGINT else f" by {signal.Signals(self.signum).name}"
        return f"interrupted{how}: nothing half-written was kept (a training run continues with --resume)"


_received: Interrupted | None = None
_reported = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:  # a second signal during the clean-up: stop now
        sys.stderr.write(f"{_received.message.split(':')[0]} again: stopped without cleaning up\n")
        sys.stderr.flush()
        os._exit(128 + signum)
    _received = Interrupted(signum)
    raise _received


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``Interrupted`` (main thread only; an inherited
    SIG_IGN stays); the previous handlers come back afterwards."""
    global _received, _reported
    _received = None
    _reported = False
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED:
            old = signal.getsignal(sig)
            if old == signal.SIG_IGN:
                continue
            previous[sig] = old
            signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def received() -> Interrupted | None:
    """The interruption that is under way, if any (typer turns KeyboardInterrupt into exit 130)."""
    return _received


def expected() -> None:
    """The interruption was the command's normal way to stop (``serve-demo``): exit 0, no line."""
    global _received
    _received = None


def reported() -> None:
    """The command already told the user what the interruption left (e.g. ``predict``: "N of M
    results in FILE"): ``main`` exits 130/143 without a second, generic line."""
    global _reported
    _reported = True


def was_reported() -> bool:
    return _reported
