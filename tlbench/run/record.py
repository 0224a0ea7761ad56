"""A cell's record, built in one place: its identity, then how it ended (trained,
diverged or failed).  The store checks the result against the schema when it is written
(tlbench.store.schema), so a key missing here fails there, loudly."""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass
from typing import Optional

import torch

from tlbench import __version__
from tlbench.plan.settings import Cell
from tlbench.run.provenance import git_state
from tlbench.store.records import Record
from tlbench.train.lr_search import SearchResult


@dataclass(frozen=True)
class Trained:
    """What training a cell produced, besides the trainer's own metrics."""

    metrics: dict  # CellTrainer.finish(): accuracy, curve, per-class scores, timing
    lr: float  # the LR that trained it (``--lr auto``: the row's choice)
    search: Optional[SearchResult]  # the row's LR search (None: a fixed --lr)
    tuning_seconds: float  # the search's other candidates, when this cell ran it
    wall_seconds: float  # this cell's own training and test pass
    data_source: str
    split_sizes: dict
    class_names: list  # the dataset's classes in label order: pictures need no plugin
    weights: dict  # weights_source, and the source run's facts for pretrain:<dataset>
    batch_size: int = 0  # the batch that ran (set once out-of-memory retries are over)


def identity(cell: Cell, device: str) -> Record:
    """What every record of ``cell`` starts with, whatever its status: names, config and
    hash, device, versions, time, git state."""
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
        "device": device,
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "tlbench": __version__,
            "python": platform.python_version(),
        },
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **({"git": git} if (git := git_state()) else {}),
    }


def trained(base: Record, done: Trained) -> Record:
    return {
        **base,
        **done.metrics,
        "status": "ok",
        "batch_size": done.batch_size,
        "wall_seconds": round(done.wall_seconds, 3),
        "lr_chosen": done.lr,
        "lr_search": done.search.to_record() if done.search is not None else None,
        "tuning_seconds": round(done.tuning_seconds, 3),
        "data_source": done.data_source,
        "class_names": list(done.class_names),
        "split_sizes": done.split_sizes,
        **done.weights,
    }


def diverged(base: Record, step: int) -> Record:
    return {
        **base,
        "status": "diverged",
        "diverged_at_step": step,
        "error": f"loss became NaN/inf at step {step}",
    }


def failed(base: Record, error: str, traceback_file: Optional[str] = None) -> Record:
    extra = {"traceback_file": traceback_file} if traceback_file is not None else {}
    return {**base, "status": "failed", "error": error, **extra}
