"""``tlbench leaderboard``: rebuild BENCHMARKS.md from the stored records, or check that
the committed one is current."""

from __future__ import annotations

from pathlib import Path

import typer

from tlbench.cli.ui import console, err_console
from tlbench.report import leaderboard


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
    console.print(f"wrote {leaderboard.write(output, path)}")
