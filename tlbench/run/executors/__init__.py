"""Where cells run: in this process (``serial``, the default) or on a Ray cluster.

An executor takes the runner the CLI prepared (data loaded, backbones checked, hashes
complete) and the cells to run, and returns the run's :class:`~tlbench.run.runner.Outcome`.
Whatever the executor, one process writes ``records.jsonl``: the one that called
:meth:`Executor.run` (the driver), with the runner's append, fsync and resume rules.
"""

from __future__ import annotations

from typing import Optional, Protocol

from tlbench.api.errors import TlbenchError
from tlbench.plan.settings import Cell
from tlbench.run.runner import Outcome, Runner

EXECUTORS = ("serial", "ray")
RAY_MISSING = "--executor ray needs Ray, which is not installed: pip install 'tlbench[ray]'"


class Executor(Protocol):
    name: str

    def run(self, runner: Runner, cells: list[Cell], force: bool = False) -> Outcome:
        """Run ``cells`` (skipping recorded ones unless ``force``), storing each record."""


class SerialExecutor:
    """Today's loop: every cell in this process, one after the other (Runner.run)."""

    name = "serial"

    def run(self, runner: Runner, cells: list[Cell], force: bool = False) -> Outcome:
        return runner.run(cells, force=force)


def make_executor(name: str, ray_address: Optional[str] = None) -> Executor:
    """The executor ``--executor NAME`` asks for; bad input is a one-line error (exit 2)."""
    if name not in EXECUTORS:
        raise TlbenchError(f"--executor {name!r} is not one of: {', '.join(EXECUTORS)}.")
    if name == "serial":
        if ray_address:
            raise TlbenchError("--ray-address needs --executor ray.")
        return SerialExecutor()
    try:
        import ray  # noqa: F401 - only to say how to install it
    except ImportError:
        raise TlbenchError(RAY_MISSING) from None
    from tlbench.run.executors.ray_cluster import RayExecutor

    return RayExecutor(address=ray_address)


__all__ = ["EXECUTORS", "Executor", "SerialExecutor", "make_executor"]
