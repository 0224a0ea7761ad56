"""pluggy hook specifications: the whole plugin API of tlbench.

Registration hooks take a ``register`` callback (the simonw/llm pattern): a plugin
calls ``register(spec)`` once per item.  Lifecycle hooks let loggers and trackers
observe a run without touching the runner.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("tlbench")
hookimpl = pluggy.HookimplMarker("tlbench")


@hookspec
def register_backbones(register):
    """Register backbones: ``register(BackboneSpec(...))``."""


@hookspec
def register_strategies(register):
    """Register freeze strategies: ``register(StrategySpec(...))``."""


@hookspec
def register_datasets(register):
    """Register datasets: ``register(DatasetSpec(...))``."""


@hookspec
def cell_started(cell):
    """Called before a cell trains; ``cell`` is a :class:`tlbench.plan.Cell`."""


@hookspec
def cell_finished(cell, record):
    """Called after a cell ends (any status) with the record that was stored."""


@hookspec
def epoch_end(cell, epoch, val_accuracy):
    """Called after each full epoch with the latest validation accuracy (0..1)."""
