"""``tlbench bench``: the naive pipeline and tlbench's, side by side, on one cell.

A built-in plugin (its ``register_commands`` hook adds the command); imports stay cheap
because every plugin manager loads it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tlbench.api.hookspecs import hookimpl

console = Console()
err_console = Console(stderr=True)


def bench(
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone name."),
    strategy: str = typer.Option("linear_probe", help="Strategy, with argument as partial:1."),
    dataset: str = typer.Option("mnist", help="Dataset name."),
    resolution: int = typer.Option(64, help="Input side in px."),
    epochs: int = typer.Option(10, help="Epochs, in both pipelines."),
    train_size: int = typer.Option(2000, help="Stratified training subset."),
    val_size: Optional[int] = typer.Option(None, help="Validation images (device profile)."),
    test_size: Optional[int] = typer.Option(None, help="Test subset (device profile)."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch (device profile)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate of the head (base LR)."),
    seed: int = typer.Option(0, help="Seed of the head init and the shuffled order."),
    weights: str = typer.Option(
        "imagenet", help="imagenet (falls back to random, said, where missing), random, file."
    ),
    num_workers: int = typer.Option(0, help="DataLoader workers of the naive pipeline."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile tlbench's side."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    data_dir: Optional[str] = typer.Option(None, envvar="TLBENCH_DATA_DIR"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    save_dir: Optional[Path] = typer.Option(
        None, "--save", help="Also write the JSON to this directory (e.g. results/bench)."
    ),
) -> None:
    """Run one cell the naive way and tlbench's way in one process; compare time and FLOPs."""
    from tlbench.perf.bench import BenchRequest, run_bench  # torch: only when it runs
    from tlbench.perf.result import save

    request = BenchRequest(
        backbone,
        strategy,
        dataset,
        resolution,
        epochs,
        train_size,
        val_size,
        test_size,
        batch_size,
        lr,
        seed,
        weights,
        num_workers,
        compile_model,
        device,
        data_dir,
    )
    result = run_bench(request, log=lambda text: err_console.print(text, highlight=False))
    if save_dir is not None:
        err_console.print(f"wrote {save(result, save_dir)}", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
        return
    console.print(bench_table(result))
    if result.get("weights_note"):
        console.print(f"[yellow]note:[/] {result['weights_note']}", highlight=False)


def bench_table(r: dict) -> Table:
    title = (
        f"{r['backbone']} / {r['strategy']} / {r['dataset']} ({r['weights']}), {r['resolution']} "
        f"px, {r['epochs']} epochs, train {r['split_sizes']['train']}, batch {r['batch_size']}, "
        f"{r['device']}"
    )
    table = Table(title=title)
    for column in (
        "pipeline",
        "wall s ↓",
        "train img/s ↑",
        "step img/s ↑",
        "test acc % ↑",
        "GFLOP executed",
        "GFLOP/s ↑",
        "MFU ↑",
    ):
        first = column == "pipeline"
        table.add_column(column, justify="left" if first else "right", no_wrap=first)
    for side in ("naive", "tlbench"):
        table.add_row(
            side,
            f"{r[f'{side}_seconds']:.1f}",
            f"{r[f'{side}_train_images_per_second']:,.0f}",
            f"{r[f'{side}_step_images_per_second']:,.0f}",
            f"{r[f'{side}_accuracy']:.2f}",
            f"{r[f'{side}_flops'] / 1e9:,.0f}",
            f"{r[f'{side}_flops_per_second'] / 1e9:,.1f}",
            f"{(r['naive_mfu'] if side == 'naive' else r['mfu']):.1%}",
        )
    table.add_row(
        "naive / tlbench",
        f"{r['speedup']:.2f}x",
        f"{r['tlbench_train_images_per_second'] / r['naive_train_images_per_second']:.2f}x",
        "",
        f"{-r['accuracy_delta']:+.2f}",
        "",
        "",
        "",
    )
    table.caption = (
        f"model: {r['flops_per_image'] / 1e6:,.1f} MFLOP/image forward; peak "
        f"{r['peak_flops_per_second'] / 1e9:,.0f} GFLOP/s ({r['peak_method']}); speedup at "
        f"100% MFU: {r['speedup_ceiling']:.2f}x; feature cache: "
        f"{r['feature_cache']}; train img/s = epochs x train images / wall s; step img/s = "
        "steady-state training steps"
    )
    return table


@hookimpl
def register_commands(app: typer.Typer) -> None:
    """``bench``: added through the hook, like a third-party plugin's commands."""
    app.command("bench")(bench)
