"""What a cell's training loop is given and what it carries between steps and calls.

Plain data, apart so the loop, the phase setup and the evaluation passes
(tlbench.train.loop, .phases, .evaluate) can share it without importing each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable, Optional

import torch

from tlbench.api.specs import Phase
from tlbench.data.preprocess import RandomShift


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    evals_per_epoch: int
    threshold: float  # percent
    seed: int
    num_classes: int
    autocast: bool = False  # bf16 autocast (CUDA only)
    cache_key: Optional[Hashable] = None  # None disables the feature cache
    augment: Optional[RandomShift] = None  # training-input augmentation: no feature cache
    compile: bool = False  # torch.compile every stage and the head
    schedule: str = "constant"  # LR schedule over the budget (tlbench.train.schedule)


@dataclass
class Diverged(Exception):
    """Loss became NaN/inf; the cell stops and is recorded as diverged."""

    step: int


@dataclass
class PhaseState:
    phase: Phase
    first_trainable: int  # stages before this index are frozen: the prefix
    optimizer: torch.optim.Optimizer
    train_inputs: Optional[torch.Tensor]  # cached prefix outputs, or None: recompute
    val_inputs: Optional[torch.Tensor]
    cache_place: str


@dataclass
class Batch:
    """A training batch's indices on the device, and the same on the host (for a
    host-resident feature cache)."""

    index: torch.Tensor
    host_index: torch.Tensor


@dataclass
class LoopState:
    """Where a (possibly paused) training loop stands: what a resumed call needs."""

    starts: list[int]  # global step at which each phase starts
    evals: set[int]  # global steps followed by a validation point
    running_loss: torch.Tensor  # summed on the device, checked once per evaluation
    step: int = 0  # steps done
    state: Optional[PhaseState] = None
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    host_perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    warm_left: int = 0
    segment: Optional[tuple[float, int]] = None  # (start, images) of the timed steps
    paused_at: Optional[float] = None


@dataclass
class Timing:
    train_seconds: float = 0.0  # timed training steps only
    train_images: int = 0
    eval_seconds: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    end: float = 0.0  # training over (last step and evaluation)
    layout_trials: float = 0.0  # memory-format trials run by this cell (one-time)
    fills_paid: float = 0.0  # feature-cache fills computed by this cell (one-time)
    fills_charged: float = 0.0  # what the fills this cell used cost, whoever paid
    paused: float = 0.0  # between resumed calls (other LR candidates trained meanwhile)

    def train_seconds_e2e(self) -> float:
        """Training wall time as if this cell ran alone: evaluations and one-time trials
        out, the cost of every cache fill it used in (computed here or not)."""
        wall = self.end - self.start - self.eval_seconds - self.paused
        return wall - self.layout_trials - self.fills_paid + self.fills_charged
