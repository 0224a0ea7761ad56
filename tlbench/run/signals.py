"""Signals while cells train: abandon the cell in flight, keep every record."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Optional

from tlbench.api.errors import Interrupted


class SignalGuard:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread.

    Python runs signal handlers between bytecodes, so the exception surfaces inside the
    step loop and unwinds the cell in flight; nothing of it is recorded.  The first
    signal restores the previous handlers, so a second one acts at once.  Inside
    :meth:`deferred` (storing a record) the signal waits until the block ends.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._deferring = False
        self._pending: Optional[int] = None

    @contextlib.contextmanager
    def active(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            self._restore()

    @contextlib.contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            if self._pending is not None:
                raise Interrupted(self._pending)

    def _handle(self, signum: int, frame) -> None:
        self._restore()
        if self._deferring:
            self._pending = signum
            return
        raise Interrupted(signum)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
