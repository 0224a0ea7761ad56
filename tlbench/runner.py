"""Runs cells: builds each model, trains it, stores its record, never loses one."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import gc
import platform
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from tlbench import __version__, lr_search
from tlbench.adapt import BatchAdapter, RandomShift
from tlbench.data.loaded import LoadedDataset, Splits
from tlbench.data.splits import make_splits
from tlbench.device import DeviceInfo
from tlbench.errors import DataUnavailable, Interrupted, PluginError, TlbenchError
from tlbench.features import FeatureCache
from tlbench.model import StagedModel
from tlbench.plan import Cell
from tlbench.provenance import cell_provenance, git_state
from tlbench.records import RECORDS_FILE, Record, append_record, finished_hashes, load_records
from tlbench.registry import Registry
from tlbench.specs import split_strategy_arg
from tlbench.train import CellTrainer, Diverged, TrainConfig
from tlbench.tuning import Tuner
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
    compile_model = False  # --compile: torch.compile each stage (not in the cell hash)

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
        self.tuner = Tuner(device.device, device.channels_last)  # layouts, inference batches
        self._splits: dict[tuple, tuple[Splits, str]] = {}
        self._loaded: dict[str, LoadedDataset] = {}
        self._models: dict[tuple, StagedModel] = {}
        self._in_flight: Optional[Cell] = None  # started, record not yet stored
        self._lr_choices: dict[str, lr_search.SearchResult] = {}  # row key -> --lr auto search

    def prepare_data(self, cells: list[Cell]) -> None:
        """Load and split every dataset up front: bad data or sizes fail before training."""
        for cell in {self._split_key(c): c for c in cells}.values():
            self.splits_for(cell)

    def finalize(self, cells: list[Cell]) -> list[Cell]:
        """The cells with their provenance (data fingerprint, weights identity, plugin
        versions: tlbench.provenance), which completes their config_hash.  Loads each
        dataset once; a cell whose data is unavailable stays as it is (it is skipped)."""
        return [self._finalized(cell) for cell in cells]

    def _finalized(self, cell: Cell) -> Cell:
        if cell.provenance is not None:
            return cell
        try:
            provenance = cell_provenance(cell, self.registry, self.loaded)
        except DataUnavailable:
            return cell
        return dataclasses.replace(cell, provenance=provenance)

    def loaded(self, dataset: str) -> LoadedDataset:
        """The dataset as loaded from its first usable source, once per runner."""
        if dataset not in self._loaded:
            self._loaded[dataset] = self.registry.get("datasets", dataset).load(self.data_dir)
        return self._loaded[dataset]

    def prepare_models(self, cells: list[Cell]) -> None:
        """Build each backbone once and check each strategy argument, before training.

        A bad ``name:arg``, or a ``--weights`` file that is not a state dict, that
        ``weights_only=True`` refuses or that does not fit the architecture, is bad input
        (a TlbenchError: exit 2), not one failed cell per cell.  A plugin bug is left for
        its cells to record (with a traceback); missing weights for them to skip.
        """
        groups: dict[tuple[str, str], list[Cell]] = {}
        for cell in cells:
            if not cell.weights.startswith("pretrain:"):  # source-training waits for its cell
                groups.setdefault((cell.backbone, cell.weights), []).append(cell)
        for group in groups.values():
            model = self._prepared_backbone(group[0])
            for text in dict.fromkeys(c.strategy for c in group) if model else ():
                name, _, arg = text.partition(":")
                spec = self.registry.get("strategies", name)
                try:
                    epochs = group[0].settings.epochs
                    spec.phases(len(model.stages), arg or None, epochs)
                except TlbenchError:
                    raise
                except Exception:  # noqa: BLE001 - a plugin bug: its cells record it
                    continue

    def _prepared_backbone(self, cell: Cell) -> Optional[StagedModel]:
        try:
            return self._backbone(cell)
        except (PluginError, WeightsUnavailable, DataUnavailable):
            return None  # the cells record the broken plugin or skip the missing weights
        except TlbenchError:
            raise
        except Exception:  # noqa: BLE001 - a plugin bug: its cells record it with a traceback
            return None

    def run(self, cells: list[Cell], force: bool = False) -> Outcome:
        """Run ``cells`` in order; SIGINT/SIGTERM raise :class:`Interrupted` between steps."""
        outcome = Outcome()
        cells = self.finalize(cells)
        records = [] if force else load_records(self.directory)
        done = finished_hashes(records)
        self._lr_choices.update(lr_search.searches_in(records))
        guard = SignalGuard()
        try:
            with guard.active():
                for index, cell in enumerate(cells):
                    if cell.config_hash in done:
                        outcome.already_done.append(cell)
                        continue
                    self._run_one(cell, index, len(cells), outcome, guard)
        except Interrupted as exc:
            exc.message = self._interrupted_message(exc, outcome)
            raise
        finally:
            self._in_flight = None
        return outcome

    def _run_one(
        self, cell: Cell, index: int, total: int, outcome: Outcome, guard: SignalGuard
    ) -> None:
        self._in_flight = cell
        self.progress.cell_started(cell, index, total)
        self.hooks.cell_started(cell=cell)
        try:
            record = self.run_cell(cell)
        except (WeightsUnavailable, DataUnavailable) as exc:
            outcome.skipped.append((cell, str(exc)))
            self._in_flight = None
            self.progress.cell_finished(cell, None, f"skipped: {exc}")
            return
        with guard.deferred():  # a signal here waits until the record is stored
            append_record(self.directory, record)
            outcome.ran.append(record)
            self._in_flight = None
        self.hooks.cell_finished(cell=cell, record=record)
        self.progress.cell_finished(cell, record)

    def _interrupted_message(self, exc: Interrupted, outcome: Outcome) -> str:
        cell = self._in_flight
        flight = f"abandoned the cell in flight ({cell.label()}); " if cell else ""
        return (
            f"interrupted by {exc.signame}: {flight}{len(outcome.ran)} cells finished in "
            f"this run and every finished record is kept in {self.directory / RECORDS_FILE}. "
            "To resume, run the same command again: recorded cells are skipped."
        )

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
        batch, tried = cell.settings.batch_size, []
        while True:
            try:
                return {**self._train(cell, batch), "status": "ok", "batch_size": batch}
            except torch.cuda.OutOfMemoryError as exc:
                tried.append(str(batch))
                if batch <= 1:
                    raise OutOfMemory(
                        f"out of memory at every batch size tried ({', '.join(tried)}): "
                        f"{_first_line(exc)}"
                    ) from exc
            # Out of the except block: the traceback no longer pins the failed step's
            # tensors, so emptying the allocator's cache really frees them.
            batch //= 2
            self.cache.entries.clear()
            gc.collect()
            torch.cuda.empty_cache()

    def _train(self, cell: Cell, batch_size: int) -> dict:
        """Train the cell at its LR (``--lr auto``: the row's choice on validation, searched
        here if this is the row's first cell), then its one test pass."""
        splits, source = self.splits_for(cell)
        t0 = time.perf_counter()
        self._backbone(cell)  # built once per weights; pretrain:<dataset> trains it here
        build = time.perf_counter() - t0
        search, trainer, own = None, None, 0.0
        if cell.settings.lr is None:
            search, trainer, own = self._auto_lr(cell, batch_size)
        lr = cell.settings.lr if search is None else search.chosen
        if trainer is None:
            t0 = time.perf_counter()
            trainer = self._trained(cell, batch_size, lr)
            own = time.perf_counter() - t0
        tuning = search.seconds - own if search is not None and search.seed == cell.seed else 0
        t0 = time.perf_counter()
        metrics = trainer.finish()
        metrics["one_time_seconds"]["backbone_build"] = round(build, 3)
        model = trainer.model
        return {
            **metrics,
            "wall_seconds": round(own + time.perf_counter() - t0, 3),
            "lr_chosen": lr,
            "lr_search": search.to_record() if search is not None else None,
            "tuning_seconds": round(tuning, 3),
            "data_source": source,
            "split_sizes": splits.sizes(),
            "weights_source": model.weights_source,
            **getattr(model, "pretrain_info", {}),  # --weights pretrain:<dataset>
        }

    def _auto_lr(self, cell: Cell, batch_size: int):
        """The row's LR search, and when this cell ran it, its trained winner and the
        winner's own seconds (``(search, None, 0.0)`` when an earlier cell chose)."""
        key = cell.row_hash
        if key in self._lr_choices:
            return self._lr_choices[key], None, 0.0
        spec = self._strategy(cell)
        trainer, search = lr_search.search(
            spec.lr_grid,
            cell.seed,
            lambda lr: self._trainer(cell, batch_size, lr),
            Diverged,
            halving=lr_search.protocol(spec, cell.settings.lr_halving)["halving"] != "off",
        )
        self._lr_choices[key] = search
        own = next(c.seconds for c in search.candidates if c.lr == search.chosen)
        return search, trainer, own

    def _trained(self, cell: Cell, batch_size: int, lr: float) -> CellTrainer:
        """A fresh model for the cell, trained at ``lr`` (validation only, no test)."""
        trainer = self._trainer(cell, batch_size, lr)
        trainer.train()
        return trainer

    def _trainer(self, cell: Cell, batch_size: int, lr: float) -> CellTrainer:
        """A fresh model for the cell and its (untrained) trainer at ``lr``."""
        splits, _ = self.splits_for(cell)
        model, strategy_arg, strategy = self._model_for(cell)
        phases = strategy.phases(len(model.stages), strategy_arg, cell.settings.epochs)
        backbone = self.registry.get("backbones", cell.backbone)
        # the trainer sets model and adapter to each phase's memory format
        adapter = BatchAdapter(cell.resolution, backbone.mean, backbone.std, self.device.device)
        config = TrainConfig(
            epochs=cell.settings.epochs,
            batch_size=batch_size,
            lr=lr,
            evals_per_epoch=cell.settings.evals_per_epoch,
            threshold=cell.threshold,
            seed=cell.seed,
            num_classes=self._dataset(cell).num_classes,
            autocast=self.device.is_cuda,
            cache_key=self._cache_key(cell, strategy),
            augment=augmentation(cell, self.device.device),
            compile=self.compile_model,
            schedule=cell.settings.schedule,
        )
        return CellTrainer(
            model,
            phases,
            splits,
            adapter,
            config,
            self.cache,
            on_step=self.progress.step,
            on_epoch=lambda e, a: self.hooks.epoch_end(cell=cell, epoch=e, val_accuracy=a / 100),
            tuner=self.tuner,
        )

    def _strategy(self, cell: Cell):
        return self.registry.get("strategies", cell.strategy.partition(":")[0])

    # ---- shared, cached inputs --------------------------------------------------------
    def _dataset(self, cell: Cell):
        return self.registry.get("datasets", cell.dataset)

    def splits_for(self, cell: Cell) -> tuple[Splits, str]:
        """The cell's splits: validation and test the same for every cell of the dataset,
        the training subsample drawn with the cell's seed (tlbench.data.splits)."""
        s = cell.settings
        key = self._split_key(cell)
        if key not in self._splits:
            loaded = self.loaded(cell.dataset)
            splits = make_splits(loaded, s.train_size, s.val_size, s.test_size, seed=key[-1])
            self._splits[key] = (splits.to(self.device.device), loaded.source)
        return self._splits[key]

    @staticmethod
    def _split_key(cell: Cell) -> tuple:
        """Seeds share splits unless --train-size subsamples (then the subset is the seed's)."""
        s = cell.settings
        seed = cell.seed if s.train_size is not None else 0
        return (cell.dataset, s.train_size, s.val_size, s.test_size, seed)

    def _backbone(self, cell: Cell) -> StagedModel:
        """The backbone as built from its weights: once per weights (and seed if random)."""
        weights = WeightsChoice.parse(cell.weights)
        key = (cell.backbone, cell.weights, cell.seed if weights.kind == "random" else None)
        if key not in self._models:
            torch.manual_seed(cell.seed)
            if weights.kind == "pretrain":  # trained here on the source, or from the cache
                from tlbench.pretrain import pretrained_backbone

                model = pretrained_backbone(self, cell)
            else:
                model = self.registry.get("backbones", cell.backbone).build(weights)
            plugin = self.registry.plugin_of("backbones", cell.backbone)
            self._models[key] = check_backbone(model, cell.backbone, plugin, cell.resolution)
        return self._models[key]

    def _model_for(self, cell: Cell):
        """A fresh copy of the backbone (built once per weights), the head seeded per cell."""
        name, _, arg = cell.strategy.partition(":")
        strategy = self.registry.get("strategies", name)
        if strategy.weights is not None and cell.weights != strategy.weights:
            raise TlbenchError(  # cells.expand gives such strategies their own weights
                f"strategy {name} starts from {strategy.weights!r} weights, not {cell.weights!r}"
            )
        model = copy.deepcopy(self._backbone(cell))
        torch.manual_seed(cell.seed)  # same head init for every strategy of a seed: paired
        model.set_head(self._dataset(cell).num_classes, cell.settings.head_hidden)
        if strategy.prepare is not None:
            positional, _ = split_strategy_arg(name, arg or None)
            strategy.prepare(model, positional if positional is not None else strategy.default_arg)
        model.to(self.device.device)
        return model, arg or None, strategy

    def _cache_key(self, cell: Cell, strategy) -> tuple:
        """Cells sharing weights, resolution and data share frozen-prefix features.

        The seed is part of the key when it changes the weights (not imagenet) or the
        training subset (--train-size subsamples: each seed draws its own).
        """
        s = cell.settings
        seed = cell.seed if cell.weights != "imagenet" else None
        subset = self._split_key(cell)[-1]
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
            subset,
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
            "row_hash": cell.row_hash,
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
            **({"git": git} if (git := git_state()) else {}),
        }

    def _save_traceback(self, cell: Cell) -> str:
        folder = self.directory / "tracebacks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{cell.config_hash}.txt"
        path.write_text(traceback.format_exc())
        return str(path)


class OutOfMemory(RuntimeError):
    """CUDA ran out of memory even at batch size 1: the cell fails with this reason."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_backbone(model: object, name: str, plugin: str, resolution: int) -> StagedModel:
    """Hold a backbone plugin to its contract, with an error that names the plugin.

    ``build`` must return a :class:`StagedModel` whose stages map a ``[B, 3, R, R]`` batch
    to ``[B, num_features]`` pooled features (tlbench attaches the classifier head).
    One probe image at the cell's resolution checks that before any training.
    """
    where = f"backbone {name!r} from plugin {plugin!r}"
    if not isinstance(model, StagedModel):
        raise PluginError(
            f"{where}: build() returned a {type(model).__name__}, expected a "
            "tlbench.model.StagedModel (ordered stages ending in pooled features, no "
            "classifier); split it with tlbench.backbones_util.staged_from_layout."
        )
    if len(model.stages) == 0 or not isinstance(model.num_features, int):
        raise PluginError(f"{where}: build() returned a StagedModel without stages.")
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    try:
        with torch.no_grad():
            probe = torch.zeros(1, 3, resolution, resolution, device=device)
            out = model.eval().forward_stages(probe)
    except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
        raise PluginError(
            f"{where}: its stages fail on a 1x3x{resolution}x{resolution} input: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, model.num_features):
        raise PluginError(
            f"{where}: its stages output shape {tuple(out.shape)} for one image, but "
            f"num_features={model.num_features}; the last stage must pool to "
            f"[batch, num_features] so tlbench can attach the classifier head."
        )
    return model


class SignalGuard:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread.

    Python runs signal handlers between bytecodes, so the exception surfaces inside the
    step loop and unwinds the cell in flight; nothing of it is recorded.  The first
    signal restores the previous handlers, so a second one acts at once.  Inside
    :meth:`deferred` (storing a record) the signal waits until the block ends.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._deferring = False
        self._pending: Optional[int] = None

    @contextlib.contextmanager
    def active(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            self._restore()

    @contextlib.contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            if self._pending is not None:
                raise Interrupted(self._pending)

    def _handle(self, signum: int, frame) -> None:
        self._restore()
        if self._deferring:
            self._pending = signum
            return
        raise Interrupted(signum)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def augmentation(cell: Cell, device: torch.device) -> Optional[RandomShift]:
    """The cell's ``--augment`` setting as a seeded transform, or None."""
    spec = getattr(cell.settings, "augment", "none")
    return None if spec == "none" else RandomShift.parse(spec, device, cell.seed)


def availability(registry: Registry, data_dir: Optional[str]):
    """A function telling, per cell, why it cannot run here (or None). Corrupt data raises."""
    data_reasons: dict[str, Optional[str]] = {}

    def data_reason(dataset: str) -> Optional[str]:
        if dataset not in data_reasons:
            try:
                registry.get("datasets", dataset).probe(data_dir)
                data_reasons[dataset] = None
            except DataUnavailable as exc:
                data_reasons[dataset] = str(exc)
        return data_reasons[dataset]

    def check(cell: Cell) -> Optional[str]:
        if data_reason(cell.dataset):
            return data_reasons[cell.dataset]
        if cell.weights.startswith("pretrain:"):  # the source dataset must be here too
            reason = data_reason(cell.weights.split(":", 1)[1])
            return f"pretraining source: {reason}" if reason else None
        if cell.weights == "imagenet":
            return registry.get("backbones", cell.backbone).imagenet_unavailable()
        return None

    return check


__all__ = ["Runner", "Outcome", "Progress", "availability", "TlbenchError"]
