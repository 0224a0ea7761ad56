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
    """Called before a cell trains; ``cell`` is a :class:`tlbench.plan.settings.Cell`."""


@hookspec
def cell_finished(cell, record):
    """Called after a cell ends (any status) with the record that was stored."""


@hookspec
def epoch_end(cell, epoch, val_accuracy):
    """Called after each full epoch with the latest validation accuracy (0..1)."""


@hookspec
def run_started(directory, cells):
    """Called once per ``tlbench run`` before any cell, with the run directory (a
    ``pathlib.Path``: records.jsonl lives there) and the cells that may run."""


@hookspec
def run_finished(directory, outcome, benchmarks):
    """Called once at the end of a run, after the leaderboard and its plots are written:
    ``outcome`` is the :class:`tlbench.run.runner.Outcome` and ``benchmarks`` the path of the
    leaderboard; both ``None`` when the run was interrupted (SIGINT/SIGTERM)."""


@hookspec
def register_commands(app):
    """Add commands to the ``tlbench`` command line: ``app`` is its ``typer.Typer``, so
    ``@app.command()`` on a function adds ``tlbench <name>`` (datasette's
    ``register_commands(cli)``). Called once per invocation, before the arguments are
    parsed; import heavy modules inside the command, not here."""
