"""rich progress bars and the end-of-run summary table."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tlbench.plan.settings import Cell
from tlbench.run.runner import Outcome
from tlbench.run.runner import Progress as RunnerProgress
from tlbench.store.records import Record

console = Console()  # stdout: tables and progress
err_console = Console(stderr=True)  # errors and warnings


class RichProgress(RunnerProgress):
    """Two bars: cells of the run, and steps within the current cell."""

    def __init__(self, console: Console, total_cells: int):
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.cells = self.bars.add_task("cells", total=total_cells)
        self.steps = self.bars.add_task("steps", total=1, visible=False)

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def cell_started(self, cell: Cell, index: int, total: int) -> None:
        self.bars.update(
            self.steps, description=f"  {escape(cell.label())}", completed=0, total=1, visible=True
        )

    def step(self, done: int, total: int) -> None:
        self.bars.update(self.steps, completed=done, total=total)

    def cell_finished(self, cell: Cell, record: Optional[Record], note: str = "") -> None:
        self.bars.advance(self.cells)
        if record is not None and record["status"] == "ok":
            self.console.print(
                f"[green]✓[/] {escape(cell.label())}: test {record['final_accuracy']:.2f}%"
                f" in {record['wall_seconds']:.1f}s"
            )
        elif record is not None:
            self.console.print(
                f"[red]✗[/] {escape(cell.label())}: {record['status']}: "
                f"{escape(record.get('error', ''))}"
            )
        else:
            self.console.print(f"[yellow]-[/] {escape(cell.label())}: {escape(note)}")


def summary_table(outcome: Outcome) -> Table:
    table = Table(title="tlbench run summary")
    for column in (
        "cell",
        "status",
        "epochs→X",
        "test acc %",
        "trainable",
        "train img/s",
        "wall s",
    ):
        table.add_column(column, justify="left" if column in ("cell", "status") else "right")
    for record in outcome.ran:
        ok = record["status"] == "ok"
        e2t = record.get("epochs_to_threshold")
        table.add_row(
            f"{record['backbone']} / {record['strategy']} ({record['weights']}) / "
            f"{record['dataset']} / s{record['seed']}",
            record["status"],
            ("–" if e2t is None else f"{e2t:g}") if ok else "",
            f"{record['final_accuracy']:.2f}" if ok else "",
            f"{record['trainable_params']:,}" if ok else "",
            f"{record['train_throughput']:,.0f}" if ok else "",
            f"{record['wall_seconds']:.1f}" if ok else "",
        )
    for cell, _reason in outcome.skipped:
        table.add_row(cell.label(), "skipped", "", "", "", "", "")
    return table
