"""User-facing errors: one clear line, exit code 2, nothing recorded is touched."""

from __future__ import annotations

import difflib
from typing import Iterable


class TlbenchError(Exception):
    """Bad input or environment; the CLI prints the message and exits with 2."""

    exit_code = 2


class TlbenchWarning(UserWarning):
    """Something was skipped but the command goes on; the CLI prints it as one line."""


class UnknownNameError(TlbenchError):
    """A backbone/strategy/dataset name that no plugin registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(
            f"unknown {kind} {name!r}.{hint} Registered: {', '.join(known) or 'none'}."
        )
        self.close_matches = close


class DuplicateNameError(TlbenchError):
    """Two plugins registered the same name for the same kind."""


class DataUnavailable(TlbenchError):
    """No source of a dataset is usable here; its cells are skipped with this reason."""


class PluginError(TlbenchError):
    """A plugin broke its contract (e.g. ``build`` returned no StagedModel).

    Raised inside a cell, so only that plugin's cells fail; the message names the plugin.
    """


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: abandon the cell in flight, keep every finished record.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that the runner's per-cell
    ``except Exception`` cannot mistake it for a failed cell.  Exit code 128 + signal.
    """

    raised = 0  # how many were raised in this command (tlbench.store.interrupts ignores more)

    def __init__(self, signum: int):
        import signal

        Interrupted.raised += 1

        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.message = f"interrupted by {self.signame}"  # the runner adds how to resume
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message
