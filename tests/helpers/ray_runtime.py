"""Helpers for the Ray executor tests: a plugin that reports (and can stall) cells from
inside the Ray worker that trains them, and waiting on what it reports.

The plugin travels to the workers inside the plugin-manager factory (cloudpickle), so
this module must be importable there: the Ray fixture puts tests/ on PYTHONPATH.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tlbench.api.hookspecs import hookimpl


class WorkerEvents:
    """Writes ``start N <strategy> <pid>`` per cell a worker starts; the ``hang_at``-th
    cell of a worker process writes ``hang N <pid>`` at its first epoch end and stalls."""

    def __init__(self, events: Path, hang_at: int = 0):
        self.events, self.hang_at, self.started = str(events), hang_at, 0

    def _log(self, line: str) -> None:
        with open(self.events, "a") as handle:
            handle.write(line + "\n")

    @hookimpl
    def cell_started(self, cell):
        self.started += 1
        self._log(f"start {self.started} {cell.strategy} {os.getpid()}")

    @hookimpl
    def epoch_end(self, cell, epoch, val_accuracy):
        if self.started == self.hang_at:
            self._log(f"hang {self.started} {os.getpid()}")
            while True:  # a long training step: only a kill gets us out
                time.sleep(0.05)


def wait_for_line(events: Path, prefix: str, timeout: float = 240, proc=None) -> list[str]:
    """The words of the first line of ``events`` starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = events.read_text().splitlines() if events.exists() else []
        for line in lines:
            if line.startswith(prefix):
                return line.split()
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended before {prefix!r} (rc {proc.returncode}):\n{out}{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {prefix!r} in {events} after {timeout}s: {lines}")
        time.sleep(0.05)
