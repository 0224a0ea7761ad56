"""Run one tiny cell in-process through the real runner (no CLI parsing)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import tlbench.plugins.registry as plugin_registry
from tlbench.plan.cells import canonical_strategy
from tlbench.plan.settings import Cell, make_settings
from tlbench.run.runner import Runner
from tlbench.train.device import resolve_device


def run_tiny(
    tmp_path: Path,
    strategy: str,
    extra_plugins=(),
    epochs: int = 2,
    weights: str = "imagenet",
    seed: int = 0,
    lr: Optional[float] = 0.01,
) -> dict:
    runner, cells = tiny_cells_runner(
        tmp_path, strategy, extra_plugins, epochs, weights, [seed], lr
    )
    return runner.run_cell(cells[0])


def tiny_cells_runner(
    tmp_path: Path,
    strategy: str,
    extra_plugins=(),
    epochs: int = 2,
    weights: str = "imagenet",
    seeds: Sequence[int] = (0,),
    lr: Optional[float] = 0.01,
) -> tuple[Runner, list[Cell]]:
    """A runner writing to ``tmp_path`` and one tiny cell per seed."""
    pm = plugin_registry.get_plugin_manager()
    for plugin in extra_plugins:
        pm.register(plugin)
    registry = plugin_registry.collect(pm)
    settings = make_settings(
        False,
        lr,
        2,
        epochs=epochs,
        batch_size=32,
        resolution=16,
        train_size=200,
        val_size=100,
        test_size=100,
    )
    name = canonical_strategy(strategy, registry)
    cells = [Cell("tiny", name, "synth", seed, weights, 16, 95.0, settings) for seed in seeds]
    return Runner(registry, pm.hook, resolve_device("cpu"), tmp_path), cells
