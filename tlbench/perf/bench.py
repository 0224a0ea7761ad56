"""``tlbench bench``: one cell, run twice in one process: the naive way, then tlbench's.

Both runs share the backbone, its weights, the head's initialization, the resolution,
the data subset (the Runner's splits), epochs, batch size, LR, seed and shuffled order;
both validate once per epoch and report the final model's accuracy on the same test
subset.  The tlbench side is :meth:`tlbench.run.runner.Runner.run_cell`, the code every
``tlbench run`` cell goes through, with a fresh feature cache.

Timed, end to end: naive = model copy, datasets and loaders, training, validation,
test; tlbench = ``run_cell`` (model copy, adapter, feature-cache fill, training,
validation, test).  Not timed, for both: loading the dataset into uint8 tensors,
building the backbone from its weights, and a short warm-up of the process.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from tlbench.api.errors import TlbenchError
from tlbench.backbones.weights import WeightsChoice, WeightsUnavailable
from tlbench.perf.flops import ModelFlops, Peak, matmul_peak, model_flops, train_step_flops
from tlbench.perf.naive import NaiveResult, NaiveSettings, run_naive, seed_transform
from tlbench.perf.result import summarize
from tlbench.plan.cells import canonical_strategy
from tlbench.plan.settings import Cell, make_settings
from tlbench.plugins import registry as plugin_registry
from tlbench.report.bench_tables import speedup_ceiling
from tlbench.run.runner import Runner
from tlbench.train.device import DeviceInfo, resolve_device
from tlbench.train.phases import phase_starts

PEAK_SIZE: Optional[int] = None  # matmul side for the peak; None: the device's default
CONTRACT_KEYS = (
    "naive_seconds",
    "tlbench_seconds",
    "speedup",
    "naive_accuracy",
    "tlbench_accuracy",
    "flops_per_image",
    "mfu",
    "device",
)


@dataclass(frozen=True)
class BenchRequest:
    """What ``tlbench bench`` was asked; None means the device profile's value."""

    backbone: str
    strategy: str
    dataset: str
    resolution: int = 64
    epochs: int = 10
    train_size: int = 2000
    val_size: Optional[int] = None
    test_size: Optional[int] = None
    batch_size: Optional[int] = None
    lr: float = 1e-3
    seed: int = 0
    weights: str = "imagenet"
    num_workers: int = 0
    compile: bool = False
    device: str = "auto"
    data_dir: Optional[str] = None


def run_bench(request: BenchRequest, log: Callable[[str], None] = lambda text: None) -> dict:
    """Run both pipelines and return the result object (``CONTRACT_KEYS`` and more)."""
    pm = plugin_registry.get_plugin_manager()
    registry = plugin_registry.collect(pm)
    hw = resolve_device(request.device)
    cell = make_cell(request, registry, hw)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        runner = Runner(
            registry, pm.hook, hw, Path(scratch), request.data_dir, compile_model=request.compile
        )
        splits, _source = runner.workspace.splits_for(cell)
        cell, note = _with_weights(runner, cell, log)
        _warm_up(runner, cell, hw)
        peak_before = matmul_peak(hw.device, size=PEAK_SIZE)
        log("naive pipeline: PIL transforms, DataLoader, fp32, backbone run every epoch ...")
        naive = _naive(runner, cell, splits, request, hw, log)
        log(f"naive: {naive.seconds:.1f} s, test accuracy {naive.accuracy:.2f}%")
        log("tlbench pipeline: Runner.run_cell ...")
        started = time.perf_counter()
        record = runner.run_cell(cell)
        tlbench_seconds = time.perf_counter() - started
        if record.get("status") != "ok":
            raise TlbenchError(f"the tlbench run of the cell failed: {record.get('error')}")
        log(f"tlbench: {tlbench_seconds:.1f} s, test accuracy {record['final_accuracy']:.2f}%")
        work = _work(runner, cell, record, splits.sizes())
    # The device's speed drifts on shared machines: the peak is the better of a
    # measurement before and one after both pipelines, so MFU is not inflated by a dip.
    best = max(
        peak_before, matmul_peak(hw.device, size=PEAK_SIZE), key=lambda p: p.flops_per_second
    )
    peak = Peak(best.flops_per_second, f"{best.method}; the better of runs before and after")
    result = summarize(request, cell, hw, note, naive, record, tlbench_seconds, work, peak)
    result["speedup_ceiling"] = round(speedup_ceiling(result), 3)
    # 1-minute load average: above the core count, other processes shared the CPU
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def make_cell(request: BenchRequest, registry, hw: DeviceInfo) -> Cell:
    settings = make_settings(
        hw.is_cuda,
        request.lr,
        1,  # one validation per epoch: the naive loop's habit, done by both
        epochs=request.epochs,
        batch_size=request.batch_size,
        resolution=request.resolution,
        train_size=request.train_size,
        val_size=request.val_size,
        test_size=request.test_size,
    )
    registry.get("backbones", request.backbone)
    registry.get("datasets", request.dataset)
    strategy = canonical_strategy(request.strategy, registry)
    weights = WeightsChoice.parse(request.weights).label()
    return Cell(
        request.backbone,
        strategy,
        request.dataset,
        request.seed,
        weights,
        request.resolution,
        95.0,
        settings,
    )


def _with_weights(runner: Runner, cell: Cell, log) -> tuple[Cell, Optional[str]]:
    """Build the backbone once (untimed); ImageNet weights missing here -> random, said."""
    try:
        runner.workspace.backbone(cell)
        return cell, None
    except WeightsUnavailable as exc:
        if cell.weights != "imagenet":
            raise
        note = f"ImageNet weights unavailable, both pipelines use --weights random: {exc}"
        log(f"note: {note}")
        cell = Cell(**{**_cell_fields(cell), "weights": "random"})
        runner.workspace.backbone(cell)
        return cell, note


def _cell_fields(cell: Cell) -> dict:
    return {name: getattr(cell, name) for name in Cell.__dataclass_fields__}


def _warm_up(runner: Runner, cell: Cell, hw: DeviceInfo) -> None:
    """Two training steps in each memory format: library init is paid by neither side."""
    model = copy.deepcopy(runner.workspace.backbone(cell)).to(hw.device)
    model.set_head(runner.workspace.dataset(cell).num_classes)
    model.to(hw.device)
    x = torch.randn(8, 3, cell.resolution, cell.resolution, device=hw.device)
    labels = torch.zeros(8, dtype=torch.long, device=hw.device)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=memory_format)
        for _ in range(2):
            F.cross_entropy(model(x.contiguous(memory_format=memory_format)), labels).backward()


def _naive(runner: Runner, cell: Cell, splits, request: BenchRequest, hw, log) -> NaiveResult:
    start = time.perf_counter()
    model, arg, strategy = runner.workspace.model_for(cell)  # the same initialization as tlbench's
    model.to(memory_format=torch.contiguous_format)  # the default format practitioners use
    phases = strategy.phases(len(model.stages), arg, cell.settings.epochs)
    spec = runner.registry.get("backbones", cell.backbone)
    transform = seed_transform(
        cell.resolution, spec.mean, spec.std, grayscale=splits.train_images.dim() == 3
    )
    settings = NaiveSettings(
        cell.settings.epochs,
        cell.settings.batch_size,
        cell.settings.lr,
        cell.seed,
        request.num_workers,
    )
    result = run_naive(model, phases, splits, transform, settings, hw.device)
    result.seconds = time.perf_counter() - start  # the model copy counts, as in run_cell
    return result


# ---------------------------------------------------------------- FLOPs of each pipeline


@dataclass(frozen=True)
class PhaseWork:
    """What one phase did: how many images it trained and validated, from where."""

    first: int  # first trainable stage; stages[:first] are the frozen prefix
    train_images: int
    train_flops: int  # forward+backward per image of stages[first:] + head (counted)
    evals: int  # validation passes that ran in this phase
    cached: bool  # tlbench served the prefix from its feature cache


@dataclass(frozen=True)
class Work:
    model: ModelFlops
    phases: tuple[PhaseWork, ...]
    sizes: dict
    best_checkpoint_pass: bool  # tlbench re-scored its best-validation checkpoint on test

    def naive_flops(self) -> int:
        """Every batch through the whole model; validation and test on the whole model."""
        total = self.sizes["test"] * self.model.forward
        for p in self.phases:
            total += p.train_images * (self.model.prefix(p.first) + p.train_flops)
            total += p.evals * self.sizes["val"] * self.model.forward
        return total

    def tlbench_flops(self) -> int:
        """Cached phases: the prefix once per train/val image, then the rest only."""
        total = self.sizes["test"] * self.model.forward
        filled = set()
        for p in self.phases:
            per_image = p.train_flops + (0 if p.cached else self.model.prefix(p.first))
            total += p.train_images * per_image
            val_pass = self.model.rest(p.first) if p.cached else self.model.forward
            total += p.evals * self.sizes["val"] * val_pass
            if p.cached and p.first not in filled:
                filled.add(p.first)
                fill_images = self.sizes["train"] + self.sizes["val"]
                total += fill_images * self.model.prefix(p.first)
        if self.best_checkpoint_pass:
            last = self.phases[-1]
            total += self.sizes["test"] * (
                self.model.rest(last.first) if last.cached else self.model.forward
            )
        return total


def _work(runner: Runner, cell: Cell, record: dict, sizes: dict) -> Work:
    model, arg, strategy = runner.workspace.model_for(cell)
    model.to(memory_format=torch.contiguous_format)
    phases = strategy.phases(len(model.stages), arg, cell.settings.epochs)
    steps_per_epoch = math.ceil(sizes["train"] / record["batch_size"])
    total = cell.settings.epochs * steps_per_epoch
    starts = phase_starts(phases, total) + [total]
    places = record["feature_cache"].split(",")
    evals = [round(epoch * steps_per_epoch) for epoch, _ in record["curve"]]
    num_classes = runner.workspace.dataset(cell).num_classes
    work = []
    for index, phase in enumerate(phases):
        lo, hi = starts[index], starts[index + 1]
        if hi <= lo:
            continue  # a phase with no steps never ran
        first, flops = train_step_flops(model, phase, cell.resolution, num_classes)
        images = sum(
            min(record["batch_size"], sizes["train"] - (s % steps_per_epoch) * record["batch_size"])
            for s in range(lo, hi)
        )
        n_evals = sum(1 for e in evals if lo < e <= hi)
        place = places[len(work)] if len(work) < len(places) else "none"
        work.append(PhaseWork(first, images, flops, n_evals, place in ("device", "host")))
    accuracies = [accuracy for _, accuracy in record["curve"]]
    best_pass = bool(accuracies) and max(accuracies) > accuracies[-1]
    return Work(model_flops(model, cell.resolution), tuple(work), sizes, best_pass)
