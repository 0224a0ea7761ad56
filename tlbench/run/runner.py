"""Runs cells: builds each model, trains it, stores its record, never loses one."""

from __future__ import annotations

import dataclasses
import gc
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from tlbench.api.errors import DataUnavailable, Interrupted
from tlbench.backbones.weights import WeightsUnavailable
from tlbench.plan.settings import Cell
from tlbench.plugins.registry import Registry
from tlbench.run import record as cell_record
from tlbench.run.claims import CellClaims
from tlbench.run.signals import SignalGuard
from tlbench.run.workspace import Workspace, first_line
from tlbench.store.records import RECORDS_FILE, Record, append_record, finished_hashes, load_records
from tlbench.store.safeio import atomic_write
from tlbench.train import lr_search
from tlbench.train.device import DeviceInfo
from tlbench.train.loop import CellTrainer
from tlbench.train.state import Diverged


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
    """Runs cells in order, stores each record as it finishes, and turns every failure
    inside a cell into a failed record; the cells' inputs come from its Workspace."""

    def __init__(
        self,
        registry: Registry,
        hooks,
        device: DeviceInfo,
        directory: Path,
        data_dir: Optional[str] = None,
        progress: Optional[Progress] = None,
        compile_model: bool = False,
    ):
        self.hooks, self.device, self.directory = hooks, device, directory
        self.progress = progress or Progress()
        self.workspace = Workspace(  # steps reach whichever progress is current
            registry, device, data_dir, self._step, compile_model=compile_model
        )
        self._in_flight: Optional[Cell] = None  # started, record not yet stored
        self._lr_choices: dict[str, lr_search.SearchResult] = {}  # row key -> --lr auto search

    def remember_lr_choice(self, row_hash: str, search: lr_search.SearchResult) -> None:
        """A row's ``--lr auto`` choice made elsewhere (an earlier run, another worker):
        this row's later cells train at it instead of searching again."""
        self._lr_choices[row_hash] = search

    def _step(self, done: int, total: int) -> None:
        self.progress.step(done, total)

    @property
    def registry(self) -> Registry:
        return self.workspace.registry

    def finalize(self, cells: list[Cell]) -> list[Cell]:
        """The cells with their provenance, which completes their config_hash
        (:meth:`Workspace.finalized`)."""
        return [self.workspace.finalized(cell) for cell in cells]

    def run(self, cells: list[Cell], force: bool = False) -> Outcome:
        """Run ``cells`` in order; SIGINT/SIGTERM raise :class:`Interrupted` between steps."""
        outcome = Outcome()
        cells = self.finalize(cells)
        records = [] if force else load_records(self.directory)
        done = finished_hashes(records)
        for row_hash, search in lr_search.searches_in(records).items():
            self.remember_lr_choice(row_hash, search)
        guard, claims = SignalGuard(), CellClaims(self.directory)
        try:
            with guard.active():
                for index, cell in enumerate(cells):
                    if cell.config_hash in done:
                        outcome.already_done.append(cell)
                        continue
                    with claims.claim(cell) as taken:  # another run on this output has it?
                        if taken is None:
                            self._run_one(cell, index, len(cells), outcome, guard)
                        else:
                            claims.report(cell, taken, outcome, self.progress)
        except Interrupted as exc:
            exc.message = self._interrupted_message(exc, outcome)
            raise
        finally:
            self._in_flight = None
            claims.close()
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
        base = self.identity(cell)
        try:
            return cell_record.trained(base, self._train_with_oom_retry(cell))
        except (WeightsUnavailable, DataUnavailable):
            raise
        except Diverged as exc:
            return cell_record.diverged(base, exc.step)
        except Exception as exc:  # noqa: BLE001 - one bad cell must not end the run
            error = f"{type(exc).__name__}: {exc}"
            return cell_record.failed(base, error, self._save_traceback(cell))

    def _train_with_oom_retry(self, cell: Cell) -> cell_record.Trained:
        batch, tried = cell.settings.batch_size, []
        while True:
            try:
                return dataclasses.replace(self._train(cell, batch), batch_size=batch)
            except torch.cuda.OutOfMemoryError as exc:
                tried.append(str(batch))
                if batch <= 1:
                    raise OutOfMemory(
                        f"out of memory at every batch size tried ({', '.join(tried)}): "
                        f"{first_line(exc)}"
                    ) from exc
            # Out of the except block: the traceback no longer pins the failed step's
            # tensors, so emptying the allocator's cache really frees them.
            batch //= 2
            self.workspace.cache.entries.clear()
            gc.collect()
            torch.cuda.empty_cache()

    def _train(self, cell: Cell, batch_size: int) -> cell_record.Trained:
        """Train the cell at its LR (``--lr auto``: the row's choice on validation, searched
        here if this is the row's first cell), then its one test pass."""
        splits, source = self.workspace.splits_for(cell)
        t0 = time.perf_counter()
        self.workspace.backbone(cell)  # built once per weights; pretrain:<dataset> trains it here
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
        return cell_record.Trained(
            metrics=metrics,
            lr=lr,
            search=search,
            tuning_seconds=tuning,
            wall_seconds=own + time.perf_counter() - t0,
            data_source=source,
            split_sizes=splits.sizes(),
            class_names=self.workspace.dataset(cell).classes(),
            weights=self.workspace.weights_info(cell),
        )

    def _auto_lr(self, cell: Cell, batch_size: int):
        """The row's LR search, and when this cell ran it, its trained winner and the
        winner's own seconds (``(search, None, 0.0)`` when an earlier cell chose)."""
        key = cell.row_hash
        if key in self._lr_choices:
            return self._lr_choices[key], None, 0.0
        spec = self.workspace.strategy(cell)
        trainer, search = lr_search.search(
            spec.lr_grid,
            cell.seed,
            lambda lr: self.trainer(cell, batch_size, lr),
            Diverged,
            halving=lr_search.protocol(spec, cell.settings.lr_halving)["halving"] != "off",
        )
        self._lr_choices[key] = search
        own = next(c.seconds for c in search.candidates if c.lr == search.chosen)
        return search, trainer, own

    def _trained(self, cell: Cell, batch_size: int, lr: float) -> CellTrainer:
        """A fresh model for the cell, trained at ``lr`` (validation only, no test)."""
        trainer = self.trainer(cell, batch_size, lr)
        trainer.train()
        return trainer

    def trainer(self, cell: Cell, batch_size: int, lr: float) -> CellTrainer:
        """The cell's untrained trainer at ``lr``; each epoch end calls the epoch_end hook."""

        def on_epoch(epoch: int, accuracy: float) -> None:
            self.hooks.epoch_end(cell=cell, epoch=epoch, val_accuracy=accuracy / 100)

        return self.workspace.trainer(cell, batch_size, lr, on_epoch)

    # ---- records ----------------------------------------------------------------------
    def identity(self, cell: Cell) -> Record:
        """What every record of ``cell`` starts with (tlbench.run.cell_record.identity)."""
        return cell_record.identity(cell, self.device.name)

    def _save_traceback(self, cell: Cell) -> str:
        folder = self.directory / "tracebacks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{cell.config_hash}.txt"
        return str(atomic_write(path, traceback.format_exc()))


class OutOfMemory(RuntimeError):
    """CUDA ran out of memory even at batch size 1: the cell fails with this reason."""
