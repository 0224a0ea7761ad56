"""Runs cells: builds each model, trains it, stores its record, never loses one."""

from __future__ import annotations

import copy
import datetime as dt
import platform
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from tlbench import __version__
from tlbench.adapt import BatchAdapter
from tlbench.data.loaded import Splits
from tlbench.data.splits import make_splits
from tlbench.device import DeviceInfo
from tlbench.errors import DataUnavailable, TlbenchError
from tlbench.features import FeatureCache
from tlbench.model import StagedModel
from tlbench.plan import Cell
from tlbench.records import Record, append_record, finished_hashes, load_records
from tlbench.registry import Registry
from tlbench.train import CellTrainer, Diverged, TrainConfig
from tlbench.weights import WeightsChoice, WeightsUnavailable


@dataclass
class Outcome:
    """What happened to each cell of a run, for the summary and the exit code."""

    ran: list[Record] = field(default_factory=list)
    already_done: list[Cell] = field(default_factory=list)
    skipped: list[tuple[Cell, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[Record]:
        return [r for r in self.ran if r["status"] == "failed"]


class Progress:
    """Callbacks the runner reports to (the CLI draws rich bars from them)."""

    def cell_started(self, cell: Cell, index: int, total: int) -> None: ...
    def step(self, done: int, total: int) -> None: ...
    def cell_finished(self, cell: Cell, record: Optional[Record], note: str = "") -> None: ...


class Runner:
    def __init__(
        self,
        registry: Registry,
        hooks,
        device: DeviceInfo,
        directory: Path,
        data_dir: Optional[str] = None,
        progress: Optional[Progress] = None,
    ):
        self.registry, self.hooks, self.device = registry, hooks, device
        self.directory, self.data_dir = directory, data_dir
        self.progress = progress or Progress()
        self.cache = FeatureCache(device.device)
        self._splits: dict[tuple, tuple[Splits, str]] = {}
        self._models: dict[tuple, StagedModel] = {}

    def prepare_data(self, cells: list[Cell]) -> None:
        """Load and split every dataset up front: bad data or sizes fail before training."""
        for cell in {(c.dataset, c.settings): c for c in cells}.values():
            self.splits_for(cell)

    def run(self, cells: list[Cell], force: bool = False) -> Outcome:
        outcome = Outcome()
        done = set() if force else finished_hashes(load_records(self.directory))
        for index, cell in enumerate(cells):
            if cell.config_hash in done:
                outcome.already_done.append(cell)
                continue
            self.progress.cell_started(cell, index, len(cells))
            self.hooks.cell_started(cell=cell)
            try:
                record = self.run_cell(cell)
            except (WeightsUnavailable, DataUnavailable) as exc:
                outcome.skipped.append((cell, str(exc)))
                self.progress.cell_finished(cell, None, f"skipped: {exc}")
                continue
            append_record(self.directory, record)
            outcome.ran.append(record)
            self.hooks.cell_finished(cell=cell, record=record)
            self.progress.cell_finished(cell, record)
        return outcome

    def run_cell(self, cell: Cell) -> Record:
        """Train one cell; any failure inside becomes a failed record, never a crash."""
        base = self._identity(cell)
        try:
            return {**base, **self._train_with_oom_retry(cell)}
        except (WeightsUnavailable, DataUnavailable):
            raise
        except Diverged as exc:
            return {
                **base,
                "status": "diverged",
                "diverged_at_step": exc.step,
                "error": f"loss became NaN/inf at step {exc.step}",
            }
        except Exception as exc:  # noqa: BLE001 - one bad cell must not end the run
            return {
                **base,
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback_file": self._save_traceback(cell),
            }

    def _train_with_oom_retry(self, cell: Cell) -> dict:
        batch = cell.settings.batch_size
        while True:
            try:
                return {**self._train(cell, batch), "status": "ok", "batch_size": batch}
            except torch.cuda.OutOfMemoryError:
                if batch <= 1:
                    raise
                batch //= 2
                self.cache.entries.clear()
                torch.cuda.empty_cache()

    def _train(self, cell: Cell, batch_size: int) -> dict:
        started = dt.datetime.now(dt.timezone.utc)
        splits, source = self.splits_for(cell)
        model, strategy_arg, strategy = self._model_for(cell)
        phases = strategy.plan(len(model.stages), strategy_arg)
        backbone = self.registry.get("backbones", cell.backbone)
        adapter = BatchAdapter(
            cell.resolution,
            backbone.mean,
            backbone.std,
            self.device.device,
            channels_last=self.device.is_cuda,
        )
        config = TrainConfig(
            epochs=cell.settings.epochs,
            batch_size=batch_size,
            lr=cell.settings.lr,
            evals_per_epoch=cell.settings.evals_per_epoch,
            threshold=cell.threshold,
            seed=cell.seed,
            num_classes=self._dataset(cell).num_classes,
            autocast=self.device.is_cuda,
            cache_key=self._cache_key(cell, strategy),
        )
        trainer = CellTrainer(
            model,
            phases,
            splits,
            adapter,
            config,
            self.cache,
            on_step=self.progress.step,
            on_epoch=lambda e, a: self.hooks.epoch_end(cell=cell, epoch=e, val_accuracy=a / 100),
        )
        metrics = trainer.run()
        wall = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
        return {
            **metrics,
            "wall_seconds": round(wall, 3),
            "data_source": source,
            "split_sizes": splits.sizes(),
            "weights_source": model.weights_source,
        }

    # ---- shared, cached inputs --------------------------------------------------------
    def _dataset(self, cell: Cell):
        return self.registry.get("datasets", cell.dataset)

    def splits_for(self, cell: Cell) -> tuple[Splits, str]:
        s = cell.settings
        key = (cell.dataset, s.train_size, s.val_size, s.test_size)
        if key not in self._splits:
            loaded = self._dataset(cell).load(self.data_dir)
            splits = make_splits(loaded, s.train_size, s.val_size, s.test_size)
            self._splits[key] = (splits.to(self.device.device), loaded.source)
        return self._splits[key]

    def _model_for(self, cell: Cell):
        """A fresh copy of the backbone (built once per weights), the head seeded per cell."""
        name, _, arg = cell.strategy.partition(":")
        strategy = self.registry.get("strategies", name)
        weights = WeightsChoice.parse(cell.weights)
        key = (cell.backbone, cell.weights, cell.seed if weights.kind == "random" else None)
        if key not in self._models:
            torch.manual_seed(cell.seed)
            self._models[key] = self.registry.get("backbones", cell.backbone).build(weights)
        model = copy.deepcopy(self._models[key])
        torch.manual_seed(cell.seed)  # same head init for every strategy of a seed: paired
        model.set_head(self._dataset(cell).num_classes, cell.settings.head_hidden)
        if strategy.prepare is not None:
            strategy.prepare(model, arg or strategy.default_arg)
        model.to(self.device.device)
        if self.device.is_cuda:
            model.to(memory_format=torch.channels_last)
        return model, arg or strategy.default_arg, strategy

    def _cache_key(self, cell: Cell, strategy) -> tuple:
        """Cells sharing weights, resolution and data share frozen-prefix features."""
        s = cell.settings
        seed = cell.seed if cell.weights != "imagenet" else None
        edited = cell.strategy if strategy.prepare is not None else None
        return (
            cell.backbone,
            cell.weights,
            seed,
            cell.resolution,
            cell.dataset,
            s.train_size,
            s.val_size,
            s.test_size,
            edited,
        )

    # ---- records ----------------------------------------------------------------------
    def _identity(self, cell: Cell) -> Record:
        import timm

        return {
            "backbone": cell.backbone,
            "strategy": cell.strategy,
            "dataset": cell.dataset,
            "seed": cell.seed,
            "weights": cell.weights,
            "config_hash": cell.config_hash,
            "config": cell.config(),
            "resolution": cell.resolution,
            "threshold": cell.threshold,
            "device": self.device.name,
            "versions": {
                "torch": torch.__version__,
                "timm": timm.__version__,
                "tlbench": __version__,
                "python": platform.python_version(),
            },
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def _save_traceback(self, cell: Cell) -> str:
        folder = self.directory / "tracebacks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{cell.config_hash}.txt"
        path.write_text(traceback.format_exc())
        return str(path)


def availability(registry: Registry, data_dir: Optional[str]):
    """A function telling, per cell, why it cannot run here (or None). Corrupt data raises."""
    data_reasons: dict[str, Optional[str]] = {}

    def check(cell: Cell) -> Optional[str]:
        if cell.dataset not in data_reasons:
            try:
                registry.get("datasets", cell.dataset).probe(data_dir)
                data_reasons[cell.dataset] = None
            except DataUnavailable as exc:
                data_reasons[cell.dataset] = str(exc)
        if data_reasons[cell.dataset]:
            return data_reasons[cell.dataset]
        if cell.weights == "imagenet":
            return registry.get("backbones", cell.backbone).imagenet_unavailable()
        return None

    return check


__all__ = ["Runner", "Outcome", "Progress", "availability", "TlbenchError"]
