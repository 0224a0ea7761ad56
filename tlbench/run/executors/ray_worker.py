"""The worker side of ``--executor ray``: one actor per slot, a warm Runner inside.

The driver (tlbench.run.executors.ray_cluster) sends one cell at a time and stores the
records the worker returns; the worker never writes a record itself.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

from tlbench.api.errors import DataUnavailable
from tlbench.backbones.weights import WeightsUnavailable
from tlbench.plan.settings import Cell
from tlbench.run.runner import Progress, Runner
from tlbench.train import lr_search


class StepCounter(Progress):
    """A worker's progress within its current cell, which the driver polls."""

    def __init__(self) -> None:
        self.done, self.total = 0, 0

    def cell_started(self, cell: Cell, index: int, total: int) -> None:
        self.done, self.total = 0, 0

    def step(self, done: int, total: int) -> None:
        self.done, self.total = done, total


class CellWorker:
    """One Ray actor: a warm Runner that trains the cells it is sent and returns records.

    ``pm_factory`` builds the worker's plugin manager: the driver passes
    ``tlbench.plugins.registry.get_plugin_manager`` (the installed entry points; a test's
    wrapper registering its own plugins travels by value with cloudpickle).
    """

    def __init__(
        self,
        pm_factory: Callable,
        device: str,
        data_dir: Optional[str],
        compile_model: bool,
        threads: Optional[int],
    ):
        import torch

        from tlbench.plugins import registry as plugin_registry
        from tlbench.train.device import resolve_device

        pm = pm_factory()
        hw = resolve_device(device)
        if threads is not None and not hw.is_cuda:
            torch.set_num_threads(threads)  # this worker's CPU share, not the whole node
        self.steps = StepCounter()
        scratch = Path(tempfile.mkdtemp(prefix="tlbench-worker-"))  # tracebacks, sent back
        self.runner = Runner(
            plugin_registry.collect(pm),
            pm.hook,
            hw,
            scratch,
            data_dir,
            progress=self.steps,
            compile_model=compile_model,
        )
        self.threads = threads if not hw.is_cuda else None

    def where(self) -> dict:
        import ray

        context = ray.get_runtime_context()
        return {
            "name": "ray",
            "node": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "resources": context.get_assigned_resources(),
            "torch_threads": self.threads,
        }

    def progress(self) -> tuple[int, int]:
        return self.steps.done, self.steps.total

    def run_cell(self, cell: Cell, lr_choice: Optional[lr_search.SearchResult]) -> dict:
        """The cell's record (any status), or ``{"skipped": reason}``; a failed cell's
        traceback comes back as text for the driver to store."""
        if lr_choice is not None:  # the row's choice, searched by an earlier cell
            self.runner.remember_lr_choice(cell.row_hash, lr_choice)
        self.steps.cell_started(cell, 0, 0)
        self.runner.hooks.cell_started(cell=cell)
        try:
            record = self.runner.run_cell(cell)
        except (WeightsUnavailable, DataUnavailable) as exc:
            return {"skipped": str(exc)}
        record["executor"] = self.where()
        trace = record.get("traceback_file")
        return {"record": record, "traceback": Path(trace).read_text() if trace else None}
