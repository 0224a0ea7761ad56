"""Run one tiny cell in-process through the real runner (no CLI parsing)."""

from __future__ import annotations

from pathlib import Path

import tlbench.registry as plugin_registry
from tlbench.cells import canonical_strategy
from tlbench.device import resolve_device
from tlbench.plan import Cell, make_settings
from tlbench.runner import Runner


def run_tiny(
    tmp_path: Path,
    strategy: str,
    extra_plugins=(),
    epochs: int = 2,
    weights: str = "imagenet",
    seed: int = 0,
    lr: float = 0.01,
) -> dict:
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
    cell = Cell(
        "tiny", canonical_strategy(strategy, registry), "synth", seed, weights, 16, 95.0, settings
    )
    runner = Runner(registry, pm.hook, resolve_device("cpu"), tmp_path)
    return runner.run_cell(cell)
