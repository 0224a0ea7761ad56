"""Turns CLI settings into concrete cells, each with a stable config hash."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from tlbench import __version__
from tlbench.api.errors import TlbenchError
from tlbench.api.specs import StrategyRef
from tlbench.store.records import SCHEMA_VERSION
from tlbench.store.records import row_hash as _row_hash
from tlbench.train.schedule import SCHEDULES

# Settings of the CPU profile: sized so the embedded default finishes in minutes on
# 2 cores (see README "The embedded default"); CUDA runs the full protocol.
CPU_PROFILE = {
    "resolution": 64,
    "train_size": 2000,
    "val_size": 500,
    "test_size": 1000,
    "epochs": 2,
    "batch_size": 64,
}
CUDA_PROFILE = {
    "resolution": None,
    "train_size": None,
    "val_size": 5000,
    "test_size": None,
    "epochs": 5,
    "batch_size": 256,
}
DEFAULT_THRESHOLD = 95.0  # for datasets whose spec declares none (DatasetSpec's default)
MAX_SEED = 2**32 - 1  # what numpy and torch seed generators accept
DEFAULT_SEEDS = 3  # both profiles: a verdict needs >= 3 paired seeds (README "Statistics")


@dataclass(frozen=True)
class Settings:
    """Everything that shapes a cell's numbers except its row keys; part of the hash."""

    epochs: int
    batch_size: int
    lr: Optional[float]  # None: --lr auto (each strategy's grid, chosen on validation)
    resolution: Optional[int]  # None: the backbone's own input size
    train_size: Optional[int]  # None: the whole train split (minus validation)
    val_size: int
    test_size: Optional[int]
    evals_per_epoch: int
    head_hidden: int = 0
    augment: str = "none"  # training-input augmentation, e.g. shift:2 (turns the cache off)
    # --lr auto prunes grids by successive halving (tlbench.train.lr_search); hashed through
    # the config's ``lr_search`` entry (provenance), not as a key of its own
    lr_halving: bool = True
    schedule: str = "constant"  # LR schedule over the budget (tlbench.train.schedule)


@dataclass(frozen=True)
class Cell:
    """One unit of work: backbone x strategy x dataset x seed x weights."""

    backbone: str
    strategy: str  # may carry an argument: "partial:2"
    dataset: str
    seed: int
    weights: str  # WeightsChoice label: imagenet, random, file:/path, pretrain:fashion
    resolution: int
    threshold: float
    settings: Settings = field(compare=False)
    # What the numbers depend on beyond the settings, known once the data is loaded
    # (Runner.finalize, tlbench.run.provenance): data fingerprint, weights identity, plugin
    # distributions and versions.  Part of config() and so of config_hash.
    provenance: Optional[dict] = field(default=None, compare=False)

    def config(self) -> dict:
        data = asdict(self)
        provenance = data.pop("provenance") or {}
        data.update(data.pop("settings"))
        data["resolution"] = self.resolution
        if data["lr"] is None:
            data["lr"] = "auto"
        del data["lr_halving"]  # in data["lr_search"] (tlbench.run.provenance) under --lr auto
        if data["schedule"] == "constant":
            del data["schedule"]  # config hashes of constant-LR cells stay as they were
        if data["augment"] == "none":
            del data["augment"]  # config hashes of cells without augmentation stay as they were
        data["schema"] = SCHEMA_VERSION
        data["tlbench"] = __version__
        data.update(provenance)
        return data

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def row_hash(self) -> str:
        """The leaderboard row: the config hash without the seed."""
        return _row_hash(self.config())

    @property
    def strategy_ref(self) -> StrategyRef:
        """The strategy text parsed: its name (the registry's key) and argument."""
        return StrategyRef.parse(self.strategy)

    def label(self) -> str:
        w = "" if self.weights == "imagenet" else f" [{self.weights}]"
        return f"{self.backbone} / {self.strategy}{w} / {self.dataset} / seed {self.seed}"


def parse_seeds(text: str) -> list[int]:
    """``"3"`` means three seeds 0,1,2; ``"0,5,7"`` is an explicit list."""
    try:
        parts = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        parts = []
    if not parts or any(not 0 <= p <= MAX_SEED for p in parts):
        raise TlbenchError(
            f"--seeds {text!r} is invalid: give a count like 3 or a list like 0,5,7 "
            f"(non-negative integers up to {MAX_SEED})."
        )
    if "," not in str(text):
        if parts[0] < 1 or parts[0] > 100:
            raise TlbenchError(f"--seeds {text!r}: a seed count must be between 1 and 100.")
        return list(range(parts[0]))
    return list(dict.fromkeys(parts))


def parse_thresholds(
    text: Optional[str], datasets: list[str], defaults: Optional[dict[str, float]] = None
) -> dict[str, float]:
    """``"95"``, ``"fashion=90"`` or ``"97,fashion=90"`` -> threshold (percent) per dataset.

    A dataset the text does not set gets its own default (``defaults``: each dataset
    spec's ``default_threshold``), else DEFAULT_THRESHOLD; a bare number sets every dataset.
    """
    default: Optional[float] = None
    overrides: dict[str, float] = {}
    for part in [p.strip() for p in str(text or "").split(",") if p.strip()]:
        name, _, value = part.rpartition("=")
        number = _percent(value, part)
        if name:
            if name not in datasets:
                raise TlbenchError(
                    f"--threshold {part!r} names dataset {name!r}, which is not in this "
                    f"run ({', '.join(datasets)})."
                )
            if name in overrides:
                raise TlbenchError(
                    f"--threshold {text!r} sets dataset {name!r} twice; give each dataset once."
                )
            overrides[name] = number
        else:
            if default is not None:
                raise TlbenchError(
                    f"--threshold {text!r} gives two thresholds for every dataset; give one."
                )
            default = number
    own = defaults or {}
    fallback = {d: own.get(d, DEFAULT_THRESHOLD) if default is None else default for d in datasets}
    return {d: overrides.get(d, fallback[d]) for d in datasets}


def _percent(value: str, part: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number <= 100:
        raise TlbenchError(
            f"--threshold {part!r} is invalid: give a percentage in (0, 100], "
            "optionally per dataset like fashion=90."
        )
    return number


def check_ranges(settings: Settings) -> None:
    """Reject settings that cannot make a meaningful cell, before anything runs: one
    TlbenchError naming every setting out of range."""
    checks = [
        (settings.epochs, "--epochs", 1, 1000),
        (settings.batch_size, "--batch-size", 1, 65536),
        (settings.evals_per_epoch, "--evals-per-epoch", 1, 100),
        (settings.head_hidden, "--head-hidden", 0, 65536),
        (settings.val_size, "--val-size", 1, 10_000_000),
    ]
    if settings.resolution is not None:
        checks.append((settings.resolution, "--resolution", 16, 1024))
    if settings.train_size is not None:
        checks.append((settings.train_size, "--train-size", 10, 10_000_000))
    if settings.test_size is not None:
        checks.append((settings.test_size, "--test-size", 1, 10_000_000))
    problems = [
        f"{flag} {value} is out of range: accepted {low}..{high}."
        for value, flag, low, high in checks
        if not low <= value <= high
    ]
    if settings.lr is not None and not 0 < settings.lr < 10:
        problems.append(f"--lr {settings.lr} is out of range: accepted auto or 0 < lr < 10.")
    if settings.schedule not in SCHEDULES:
        accepted = ", ".join(SCHEDULES)
        problems.append(f"--schedule {settings.schedule!r} is unknown: accepted {accepted}.")
    if problems:
        raise TlbenchError(" ".join(problems))
    if settings.augment != "none":
        import torch

        from tlbench.data.preprocess import RandomShift

        RandomShift.parse(settings.augment, torch.device("cpu"), 0)  # raises if unknown


def parse_lr(text: str) -> Optional[float]:
    """``auto`` (None: per-strategy grid chosen on validation) or a fixed positive LR."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 10:
        raise TlbenchError(
            f"--lr {text!r} is invalid: give auto (chosen on validation per strategy) "
            "or a learning rate with 0 < lr < 10, e.g. 1e-3."
        )
    return value


def make_settings(
    is_cuda: bool,
    lr: Optional[float],
    evals_per_epoch: int,
    head_hidden: int = 0,
    augment: str = "none",
    lr_halving: bool = True,
    schedule: str = "constant",
    **given: Optional[int],
) -> Settings:
    """Settings from what the user gave, the rest from the device's profile."""
    profile = CUDA_PROFILE if is_cuda else CPU_PROFILE
    unknown = set(given) - set(profile)
    if unknown:
        raise ValueError(f"not profile settings: {sorted(unknown)}")
    values = {k: given[k] if given.get(k) is not None else v for k, v in profile.items()}
    settings = Settings(
        lr=lr,
        evals_per_epoch=evals_per_epoch,
        head_hidden=head_hidden,
        augment=augment,
        lr_halving=lr_halving,
        schedule=schedule,
        **values,
    )
    check_ranges(settings)
    return settings
