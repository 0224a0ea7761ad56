"""SIGINT and SIGTERM anywhere in a command: one line saying what was kept, 130 or 143.

The runner's ``SignalGuard`` handles signals while cells train (abandon the cell in
flight, keep every record).  Outside training (planning, the leaderboard, its pictures)
:func:`handled` turns the signal into :class:`~tlbench.api.errors.Interrupted` with the
message of the current :func:`phase`.  After the first signal every later one is
ignored, so a second Ctrl-C cannot interrupt the unwinding or a library's ``atexit``
handler (torch._dynamo's printed a 20-line traceback).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from tlbench.api.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NOTHING_HALF_WRITTEN = (
    "every record written so far is kept and no file was left half-written (records are "
    "appended whole, other outputs replaced atomically)"
)

_phase = ["before training", NOTHING_HALF_WRITTEN]


def _handle(signum: int, frame) -> None:
    if Interrupted.raised:  # the runner's guard already acted on a first signal
        return
    ignore_further()
    exc = Interrupted(signum)
    doing, kept = _phase
    exc.message = f"interrupted by {exc.signame} {doing}: {kept}."
    raise exc


def ignore_further() -> None:
    """From now on SIGINT and SIGTERM do nothing: the command is ending."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Inside: SIGINT/SIGTERM raise Interrupted.  Handlers are restored on a normal exit
    (in-process callers, tests); after an interruption they stay ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    Interrupted.raised = 0
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    interrupted = False
    try:
        yield
    except Interrupted:
        interrupted = True
        ignore_further()
        raise
    finally:
        if not interrupted:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        _phase[:] = ["before training", NOTHING_HALF_WRITTEN]


@contextlib.contextmanager
def phase(doing: str, kept: str = NOTHING_HALF_WRITTEN) -> Iterator[None]:
    """Name what the command is doing, for the message of a signal that arrives now."""
    saved = list(_phase)
    _phase[:] = [doing, kept]
    try:
        yield
    finally:
        _phase[:] = saved
