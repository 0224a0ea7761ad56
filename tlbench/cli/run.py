"""``tlbench run``: plan the cells of the cross-product, check them, train, and write the
records and the leaderboard (``--dry-run``: the plan only)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tlbench.api.errors import Interrupted, TlbenchError
from tlbench.cli.leaderboard import class_names
from tlbench.cli.ui import RichProgress, console, summary_table
from tlbench.data.folder import add_folder_datasets
from tlbench.plan.cells import Choices, expand
from tlbench.plan.inputs import check_run
from tlbench.plan.settings import (
    DEFAULT_SEEDS,
    Cell,
    Settings,
    make_settings,
    parse_lr,
    parse_seeds,
    parse_thresholds,
)
from tlbench.plan.sizes import check_sizes, with_dataset_defaults
from tlbench.plugins import registry as plugin_registry
from tlbench.plugins.registry import Registry
from tlbench.report import leaderboard
from tlbench.run.contract import check_cells
from tlbench.run.executors import Executor, make_executor
from tlbench.run.provenance import check_same_settings
from tlbench.run.runner import Outcome, Runner
from tlbench.run.workspace import availability
from tlbench.store.records import check_writable, finished_hashes, load_records, run_dir
from tlbench.train.device import resolve_device

DEFAULT_BACKBONES = "efficientnet_lite0"  # the one backbone with ImageNet weights offline
DEFAULT_STRATEGIES = "linear_probe,partial,full,two_stage"
DEFAULT_DATASETS = "mnist,fashion"


def run(
    backbones: str = typer.Option(DEFAULT_BACKBONES, help="Comma list or 'all'."),
    strategies: str = typer.Option(
        DEFAULT_STRATEGIES, help="Comma list or 'all'; arguments as name:arg (partial:1)."
    ),
    datasets: str = typer.Option(
        DEFAULT_DATASETS, help="Comma list or 'all'; folder:NAME=PATH reads an image folder."
    ),
    weights: str = typer.Option(
        "imagenet",
        help="imagenet, random, pretrained (the plugin's own), a state-dict file, or "
        "pretrain:<dataset>; per backbone as resnet18=imagenet,tinycnn=/path/w.pt.",
    ),
    epochs: Optional[int] = typer.Option(None, help="Epoch budget per cell [profile]."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size [profile]."),
    lr: str = typer.Option(
        "auto",
        help="Adam LR of the head (base LR), or auto: each strategy's own grid, chosen on "
        "validation by the first seed of each row.",
    ),
    schedule: str = typer.Option(
        "constant", help="LR schedule over the budget: constant, or cosine (5% warm-up)."
    ),
    lr_halving: bool = typer.Option(
        True, help="--lr auto: prune grids of 3+ by successive halving (eta 3)."
    ),
    resolution: Optional[int] = typer.Option(
        None, help="Input side in px [backbone's own on CUDA, 64 on CPU]."
    ),
    train_size: Optional[int] = typer.Option(
        None, help="Stratified training subsample [all on CUDA, 2000 on CPU]."
    ),
    val_size: Optional[int] = typer.Option(None, help="Validation images held out of train."),
    test_size: Optional[int] = typer.Option(None, help="Stratified test subsample."),
    seeds: str = typer.Option(str(DEFAULT_SEEDS), help="Seed count (3 -> 0,1,2) or list (0,5,7)."),
    threshold: Optional[str] = typer.Option(
        None,
        help="Percent; per dataset like 95,fashion=90 [each dataset's own: mnist 95, fashion 90].",
    ),
    evals_per_epoch: int = typer.Option(4, help="Validation evaluations per epoch."),
    head_hidden: int = typer.Option(0, help="Hidden units of an MLP head (0: Linear)."),
    reference: bool = typer.Option(True, help="Add the from-scratch row (strategy scratch)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    augment: str = typer.Option(
        "none", help="Training augmentation: shift or shift:N px (turns the feature cache off)."
    ),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile every stage."),
    output: Path = typer.Option(
        Path("runs"),
        help="Results directory (runs/; the repository's committed reference is results/).",
    ),
    run_name: Optional[str] = typer.Option(
        None, help="Sub-directory of --output [device-resolution-train-epochs]."
    ),
    data_dir: Optional[str] = typer.Option(
        None, envvar="TLBENCH_DATA_DIR", help="Directory with the IDX files."
    ),
    benchmarks: Optional[Path] = typer.Option(
        None, help="Leaderboard file to write [<output>/BENCHMARKS.md]."
    ),
    force: bool = typer.Option(False, help="Recompute cells that are already recorded."),
    skip_bad_images: bool = typer.Option(
        False, help="folder: datasets skip unreadable files (counted) instead of stopping."
    ),
    dry_run: bool = typer.Option(False, help="Print the planned cells and exit."),
    executor: str = typer.Option(
        "serial", help="serial (in this process) or ray (a Ray cluster: tlbench[ray])."
    ),
    ray_address: Optional[str] = typer.Option(
        None, help="--executor ray: auto or host:port of a running cluster [a local runtime]."
    ),
) -> None:
    """Train every cell of the cross-product and write records and the leaderboard."""
    options = dict(locals())  # every option by name, for check_run and the plan
    cell_executor = make_executor(executor, ray_address)
    pm = plugin_registry.get_plugin_manager()
    registry = plugin_registry.collect(pm)
    hw = resolve_device(device)
    options["datasets"] = add_folder_datasets(registry, datasets, skip_bad_images)
    check_run(registry, hw.is_cuda, **options)  # every bad option in one message
    names = {
        kind: registry.resolve_list(kind, options[kind])
        for kind in ("backbones", "strategies", "datasets")
    }
    settings = _settings(registry, names, hw.is_cuda, options)
    cells = expand(_choices(registry, names, options), settings, registry)
    directory = run_dir(output, run_name or _default_run_name(hw.slug, settings))
    blocked = {c: r for c in cells if (r := availability(registry, data_dir)(c))}
    runner = Runner(registry, pm.hook, hw, directory, data_dir, compile_model=compile_model)
    # the data fingerprint completes each cell's config_hash (tlbench.run.provenance)
    cells = runner.finalize(cells)
    check_cells(runner, [c for c in cells if c not in blocked])  # plugin contract, plans
    check_sizes(runner, [c for c in cells if c not in blocked])  # all size problems at once
    if dry_run:
        _dry_run(cells, registry, blocked, directory, data_dir)
        return
    outcome = _train(pm.hook, runner, directory, cells, blocked, force, cell_executor)
    path = leaderboard.write(output, benchmarks or output / "BENCHMARKS.md", class_names(registry))
    pm.hook.run_finished(directory=directory, outcome=outcome, benchmarks=path)
    console.print(summary_table(outcome))
    _report(outcome, directory, path)
    if outcome.failed:
        raise typer.Exit(1)


def _settings(registry: Registry, names: dict, is_cuda: bool, o: dict) -> Settings:
    """The run's settings: the options, else the device profile, else each dataset's
    own smaller defaults (tlbench.plan.sizes)."""
    return make_settings(
        is_cuda,
        parse_lr(o["lr"]),
        o["evals_per_epoch"],
        o["head_hidden"],
        augment=o["augment"],
        lr_halving=o["lr_halving"],
        schedule=o["schedule"],
        epochs=o["epochs"],
        batch_size=o["batch_size"],
        resolution=o["resolution"],
        **with_dataset_defaults(
            [registry.get("datasets", d) for d in names["datasets"]],
            is_cuda,
            train_size=o["train_size"],
            val_size=o["val_size"],
            test_size=o["test_size"],
        ),
    )


def _choices(registry: Registry, names: dict, o: dict) -> Choices:
    datasets = names["datasets"]
    defaults = {d: registry.get("datasets", d).default_threshold for d in datasets}
    return Choices(
        names["backbones"],
        names["strategies"],
        datasets,
        parse_seeds(o["seeds"]),
        _weights_label(o["weights"]),
        parse_thresholds(o["threshold"], datasets, defaults),
        o["reference"],
    )


def _dry_run(cells, registry: Registry, blocked: dict, directory: Path, data_dir) -> None:
    console.print(plan_table(cells, registry, blocked, directory, data_dir))
    try:
        check_same_settings(directory, load_records(directory), cells)
    except TlbenchError as exc:  # a dry run says so and plans nothing else
        console.print(f"[bold yellow]this run would stop:[/] {exc}", highlight=False)


def _train(
    hook, runner: Runner, directory: Path, cells: list[Cell], blocked: dict, force, executor
) -> Outcome:
    """Check the run directory, prepare data and models, run the cells: the hooks see
    the start, and the end too when interrupted."""
    runnable = [c for c in cells if c not in blocked]
    check_same_settings(directory, load_records(directory), runnable)
    check_writable(directory)
    runner.workspace.prepare_data(runnable)
    runner.workspace.prepare_models(runnable)
    hook.run_started(directory=directory, cells=runnable)
    try:
        return _execute(runner, cells, blocked, force, executor)
    except Interrupted:
        hook.run_finished(directory=directory, outcome=None, benchmarks=None)
        raise


def _execute(runner: Runner, cells: list[Cell], blocked: dict, force: bool, executor: Executor):
    runnable = [c for c in cells if c not in blocked]
    with RichProgress(console, len(runnable)) as progress:
        runner.progress = progress
        outcome = executor.run(runner, runnable, force=force)
    outcome.skipped.extend(blocked.items())
    return outcome


def _report(outcome, directory: Path, benchmarks: Path) -> None:
    console.print(
        f"{len(outcome.ran)} cells ran, {len(outcome.already_done)} already "
        f"recorded (use --force to recompute), {len(outcome.skipped)} skipped, "
        f"{len(outcome.failed)} failed. Records: {directory}; leaderboard: "
        f"{benchmarks}"
    )
    for reason in dict.fromkeys(r for _, r in outcome.skipped):
        console.print(f"[yellow]skipped:[/] {reason}", highlight=False)
    for record in outcome.failed:
        console.print(
            f"[red]failed:[/] {record['backbone']} / {record['strategy']} / "
            f"{record['dataset']} / seed {record['seed']}: {record['error']} "
            f"(traceback: {record.get('traceback_file', '-')})",
            highlight=False,
        )


def _weights_label(text: str) -> str | dict[str, str]:
    from tlbench.backbones.weights import parse_weights_option

    choices = parse_weights_option(text)
    return choices[""] if len(choices) == 1 else choices


def _default_run_name(slug: str, settings) -> str:
    res = f"{settings.resolution}px" if settings.resolution else "nativepx"
    train = f"train{settings.train_size}" if settings.train_size else "trainfull"
    return f"{slug}-{res}-{train}-e{settings.epochs}"


def plan_table(
    cells: list[Cell], registry: Registry, blocked: dict, directory: Path, data_dir: Optional[str]
) -> Table:
    done = finished_hashes(load_records(directory))
    table = Table(title=f"{len(cells)} planned cells -> {directory}")
    for column in (
        "backbone",
        "strategy",
        "dataset",
        "seed",
        "weights source",
        "data source",
        "resolution",
        "status",
    ):
        table.add_column(column)
    for cell in cells:
        status = (
            "done"
            if cell.config_hash in done
            else f"skip: {blocked[cell]}"
            if cell in blocked
            else "will run"
        )
        table.add_row(
            cell.backbone,
            cell.strategy,
            cell.dataset,
            str(cell.seed),
            _weights_source(cell, registry),
            _data_source(cell, registry, data_dir),
            str(cell.resolution),
            status,
        )
    return table


def _weights_source(cell: Cell, registry: Registry) -> str:
    if cell.weights != "imagenet":
        return cell.weights
    spec = registry.get("backbones", cell.backbone)
    return "unavailable" if spec.imagenet_unavailable() else spec.imagenet_sources[0]


def _data_source(cell: Cell, registry: Registry, data_dir: Optional[str]) -> str:
    try:
        return registry.get("datasets", cell.dataset).probe(data_dir)
    except TlbenchError:
        return "not found"
