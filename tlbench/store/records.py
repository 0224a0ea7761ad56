"""The one results schema and the append-only store that holds it.

``results/<run>/records.jsonl`` gets one JSON object per finished cell, validated
against ``tlbench.store.schema`` and appended whole or not at all (``tlbench.store.safeio``): a
``kill -9`` mid-write leaves at worst one partial last line, which loading reports and
skips, like any line that does not validate.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional, TypedDict

from tlbench.api.errors import TlbenchError, TlbenchWarning
from tlbench.store import outputs
from tlbench.store.outputs import RECORDS_FILE
from tlbench.store.safeio import append_line, open_regular
from tlbench.store.schema import check

FINISHED = ("ok", "diverged")  # statuses that resume treats as done
SCHEMA_VERSION = 2  # bump when records gain required keys or metrics change meaning
# (part of every config, so of config_hash: cells recorded under an older schema run again)

IDENTITY_KEYS = ("backbone", "strategy", "dataset", "seed", "weights")
# Keys of ``config`` that a run directory may mix: the cell's identity, its threshold
# (only epochs-to-X% depends on it) and facts that follow from the identity (the
# resolved resolution, the weights' and plugins' identity, the data's fingerprint).
# Everything else is a *setting*: one run directory holds one value of each.
PER_CELL_KEYS = (
    *IDENTITY_KEYS, "threshold", "resolution", "data", "weights_id", "plugins", "lr_search"
)  # fmt: skip

REQUIRED_KEYS = (
    # every ``ok`` record of the current schema has these (tests/test_records.py checks
    # the committed results); ``config`` must hold REQUIRED_CONFIG_KEYS
    *IDENTITY_KEYS,
    "status",
    "config_hash",
    "config",
    "weights_source",
    "data_source",
    "split_sizes",
    "resolution",
    "device",
    "versions",
    "finished_at",
    "threshold",
    "epochs_to_threshold",
    "epoch_budget",
    "final_accuracy",
    "best_val_accuracy",
    "best_val_test_accuracy",
    "trainable_params",
    "trainable_params_per_phase",
    "total_params",
    "train_throughput",
    "infer_throughput",
    "wall_seconds",
    "freeze_verified",
    "feature_cache",
    "memory_format",
    "inference_batch",
    "batch_size",
    "curve",
    "per_class",
    "confusion",
    "test_correct",
    "ece",
    "bn_policy",
    "lr_chosen",
    "lr_search",
    "tuning_seconds",
    "train_seconds",
    "train_step_throughput",
    "one_time_seconds",
    "cache_fill_charged_seconds",
    "infer_batch",
    "infer_lora_merged",
)
REQUIRED_CONFIG_KEYS = ("schema", "tlbench", "data", "weights_id", "plugins")


class Record(TypedDict, total=False):
    # identity
    backbone: str  # registered backbone name
    strategy: str  # strategy name, with argument if any ("partial:2")
    dataset: str
    seed: int
    weights: str  # requested weights: imagenet | random | file:/path | pretrain:<dataset>
    status: str  # ok | diverged | failed
    config_hash: str  # sha256 prefix of the cell config: resume key
    config: dict  # every setting that shaped the numbers, plus schema, tlbench version,
    # data fingerprint (data), weights identity (weights_id), plugin versions (plugins)
    row_hash: str  # sha256 prefix of the config minus the seed: one leaderboard row
    git: dict  # {"commit": sha, "dirty": bool} when tlbench runs from a git checkout
    # environment
    weights_source: str  # where the weights actually came from
    data_source: str  # which dataset source was used
    class_names: list  # the dataset's classes in label order (older records: absent)
    split_sizes: dict  # {"train": n, "val": n, "test": n}
    resolution: int  # input side in px
    device: str
    versions: dict  # torch, timm, tlbench, python
    finished_at: str  # ISO time, UTC
    # metrics (definitions in README)
    threshold: float  # percent, validation accuracy
    epochs_to_threshold: Optional[float]  # fractional epochs; None = not reached
    seconds_to_threshold: Optional[float]  # training seconds to that point
    epoch_budget: int  # epochs trained (the censoring point)
    final_accuracy: float  # percent on test, final model
    best_val_accuracy: float  # percent on validation, best evaluation
    best_val_test_accuracy: float  # percent on test, best-validation checkpoint
    trainable_params: int  # max over phases of what the optimizer updates
    trainable_params_per_phase: dict  # phase name -> count
    total_params: int
    train_throughput: float  # end to end: epochs x train images / train_seconds
    train_seconds: float  # training wall, evaluations and trials out, used cache fills in
    train_step_throughput: Optional[float]  # timed steps only (warm-up out); None: untimed
    one_time_seconds: dict  # paid here for shared work: cache_fill, layout_trials, backbone_build
    cache_fill_charged_seconds: float  # cost of the cache fills this cell used, whoever paid
    infer_throughput: float  # timm-style, once per network (tlbench.train.inference): median img/s
    infer_batch: int  # the fixed batch of that measurement
    infer_lora_merged: bool  # LoRA merged into the weights for it (exact)
    infer_folded_batchnorm: bool  # BatchNorm folded for it (exact in eval mode)
    bn_policy: str  # per phase: frozen | train (BatchNorm in the stages it trains)
    lr_chosen: float  # the cell's LR (--lr auto: the row's choice on validation)
    lr_search: Optional[dict]  # --lr auto: grid, candidates (val acc, seconds), chosen, seed
    tuning_seconds: float  # LR-search candidates other than the chosen one, run by this cell
    wall_seconds: float  # the whole cell, data prep and evaluation included
    freeze_verified: bool  # frozen tensors and BN stats unchanged by training
    freeze_violations: list  # names of frozen tensors that changed
    feature_cache: str  # per phase: device|host (cached there), none, off:<why> (see train.py)
    memory_format: str  # per phase: nchw|nhwc:<why> (measured, forward-only, cuda, forced)
    memory_format_rates: list  # per phase: {"nchw": img/s, "nhwc": img/s} trial, or None
    inference_batch: int  # batch of the final test pass (whole model; tlbench.train.autotune)
    inference_folded_batchnorm: bool  # test pass ran with BatchNorm folded (train.bn_fold)
    batch_size: int  # batch that actually ran
    curve: list  # [[epoch, val_accuracy_percent], ...]
    per_class: dict  # precision/recall/f1/support lists, class order
    confusion: list  # [true][pred] counts on test
    test_correct: str  # per test image (split order) 1 = correct: base64 packed bits
    confidence_correct: Optional[float]  # mean max-softmax (0..1) on correct test predictions
    confidence_wrong: Optional[float]  # mean max-softmax on wrong ones; None: none wrong
    ece: float  # expected calibration error on test, 15 equal-width bins, 0..1
    # --weights pretrain:<dataset>: the source run the backbone came from
    pretrain_source: str  # source dataset name
    pretrain_source_accuracy: float  # percent, test split of the source dataset
    pretrain_checkpoint: str  # path of the cached source checkpoint
    pretrain_cache_hit: bool  # True: reused from the model cache, False: trained now
    error: str  # failed cells: the one-line error
    diverged_at_step: int  # diverged cells: the step where loss went non-finite


class CorruptRecordWarning(TlbenchWarning):
    """A records.jsonl line could not be read; it is skipped and its cell runs again."""


def run_dir(output: str | os.PathLike, run_name: str) -> Path:
    """``output/run_name``, refusing a run name that could leave ``output``."""
    outputs.check_run_name(run_name)
    return outputs.inside(Path(output), run_name)


def check_writable(directory: Path) -> None:
    """Fail before training when the results directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TlbenchError(
            f"cannot write results to {directory}: {exc.strerror or exc}; "
            "choose a writable --output directory."
        ) from None
    outputs.check(directory, None)  # records, lock file, plots/ and tracebacks/ are what they seem


class RecordRefused(TlbenchError):
    """A record that would not read back (NaN, wrong types): not stored; exit code 1."""

    exit_code = 1


def append_record(directory: Path, record: Record) -> None:
    """Append one record as one line: whole, checked and fsynced, or not at all
    (``tlbench.store.safeio.append_line``); a record that does not validate is refused."""
    problem = check(record)
    if problem is not None:
        raise RecordRefused(
            f"refused to store the record of {record.get('backbone')} / "
            f"{record.get('strategy')} / {record.get('dataset')} / seed {record.get('seed')} "
            f"in {directory / RECORDS_FILE}: {problem}; every earlier record is kept."
        )
    line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()
    append_line(directory / RECORDS_FILE, line)


def load_records(directory: Path) -> list[Record]:
    """Every valid record; a corrupt line or an invalid record is reported (file:line and
    field) and skipped.  A records file that is a symlink or not a regular file raises
    ``UnsafePathError`` (never followed, never read: a FIFO would block)."""
    path = directory / RECORDS_FILE
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []
    records: list[Record] = []
    with os.fdopen(fd, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            record = _parse_line(raw, path, number)
            if record is not None:
                records.append(record)
    return records


def _parse_line(raw: bytes, path: Path, number: int) -> Optional[Record]:
    if not raw.strip():
        return None
    try:
        record: Any = json.loads(raw.rstrip(b"\r\n"))  # same message before and after repair
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        _warn_skipped(path, number, f"corrupt JSON ({exc})")
        return None
    if not isinstance(record, dict) or not isinstance(record.get("config_hash"), str):
        _warn_skipped(path, number, "not a record (no config_hash)")
        return None
    problem = check(record)
    if problem is not None:
        _warn_skipped(path, number, f"an invalid record ({problem})")
        return None
    return record  # type: ignore[return-value]


def _warn_skipped(path: Path, number: int, why: str) -> None:
    warnings.warn(
        f"{path}:{number}: skipped a line that is {why}; every other record is kept and "
        "the cell it held runs again (the line stays in the file for inspection).",
        CorruptRecordWarning,
        stacklevel=4,
    )


def row_hash(config: dict) -> str:
    """The leaderboard row of a config: its hash without the seed (seeds pool, nothing else)."""
    rest = {k: v for k, v in config.items() if k != "seed"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]


def run_settings(config: dict) -> dict:
    """The part of a config that must be equal for every record of one run directory."""
    return {k: v for k, v in config.items() if k not in PER_CELL_KEYS}


def finished_hashes(records: list[Record]) -> set[str]:
    return {r["config_hash"] for r in records if r.get("status") in FINISHED}


def latest_by_hash(records: list[Record]) -> list[Record]:
    """The newest record per config hash (a --force rerun supersedes the old one)."""
    latest: dict[str, Record] = {}
    for record in records:
        latest[record["config_hash"]] = record
    return list(latest.values())


def discover_runs(output: str | os.PathLike) -> list[Path]:
    root = Path(output)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"*/{RECORDS_FILE}"))
