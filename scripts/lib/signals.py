"""SIGTERM (systemd stopping a unit, a timeout) unwinds a run like Ctrl-C, so its cleanup
runs: uploads aborted, scratch databases dropped, spool files deleted, failure recorded."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Optional

EXIT_TERMINATED = 143


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM; a BaseException so `except Exception` lets it pass."""


def _raise_terminated(signum: int, frame: Optional[FrameType]) -> None:
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def sigterm_ignored() -> Iterator[None]:
    """For cleanup that a second SIGTERM must not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
