"""``tlbench leaderboard``: rebuild BENCHMARKS.md from the stored records, or check that
the committed one is current."""

from __future__ import annotations

from pathlib import Path

import typer

from tlbench.cli.ui import console, err_console
from tlbench.plugins import registry as plugin_registry
from tlbench.plugins.registry import Registry
from tlbench.report import leaderboard


def class_names(registry: Registry) -> dict[str, list[str]]:
    """Every registered dataset's class names: labels for the pictures of records written
    before records carried them (the report itself never loads plugins)."""
    return {name: registry.get("datasets", name).classes() for name in registry.names("datasets")}


def leaderboard_cmd(
    output: Path = typer.Option(Path("results"), help="Results directory to read."),
    path: Path = typer.Option(Path("BENCHMARKS.md"), help="File to write."),
    check: bool = typer.Option(False, help="Exit 1 if the file is stale; write nothing."),
) -> None:
    """Rebuild BENCHMARKS.md from the records under results/."""
    if check:
        if leaderboard.is_stale(output, path):
            err_console.print(
                f"{path} is stale relative to {output}/: run `tlbench leaderboard` and commit it."
            )
            raise typer.Exit(1)
        console.print(f"{path} is up to date.")
        return
    registry = plugin_registry.collect(plugin_registry.get_plugin_manager())
    console.print(f"wrote {leaderboard.write(output, path, class_names(registry))}")
