"""Execution choices made by measurement: memory layout per phase, inference batch.

Memory layout: NCHW or NHWC for each training phase, measured on the CPU, NHWC on CUDA.

Why measure instead of a rule: on the CPU the faster layout depends on the layers a
phase trains, their spatial size and the machine (oneDNN picks kernels by ISA).
Training steps, 64 px, batch 64, fused Adam, img/s NCHW -> NHWC, 2 cores:

    resnet18, whole network       178 -> 185, 181 -> 205   (AMD EPYC, AVX-512)
    resnet18, last stage only     536 -> 445   (2x2 maps: NHWC pays weight reorders)
    efficientnet_lite0, whole     108 -> 208   (depthwise convolutions)
    resnet18, whole network       101 ->  85   (an earlier 2-core machine, fixed trial)

(the first four: trials recorded in results/bench/*.json by ``tlbench bench``).

So a phase that trains part of the backbone times a few real steps of that part in
both layouts, taking turns (on copies, with the phase's own inputs; a best-of-2 trial
run one layout after the other once picked the wrong one on a drifting machine), and
keeps the faster by median step; the decision is remembered per (architecture,
trainable set, batch shape), so every seed and strategy that shares it measures once.
Phases that only run the backbone forward (head-only: cache fill, evaluation) take
NHWC, faster for inference on every CPU measured (efficientnet_lite0 374 -> 661 img/s,
resnet18 305 -> 330).
``TLBENCH_CHANNELS_LAST=0/1`` forces one layout everywhere.

Inference batch (evaluation, feature-cache fill, test): on CUDA twice the training
batch; on the CPU the faster of 32 and 64 images, which also depends on the network
(eval-mode forward, 64 px, NHWC, img/s at 32 -> 64, a development measurement:
efficientnet_lite0 1078 -> 816, resnet18 475 -> 623).  The first pass over enough
images times its own batches (no image is processed twice) and the choice is remembered
per (architecture, start stage, input size).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tlbench.api import env
from tlbench.api.model import StagedModel
from tlbench.train.device import synchronize

TRIAL_STEPS = 3  # scored steps per layout, taking turns, after one unscored step each
INFERENCE_TRIAL = (32, 64, 32, 64)  # CPU: the first batches of a pass; the 2nd of each is timed


@dataclass(frozen=True)
class FormatChoice:
    """The layout a phase runs in and why; ``rates`` (img/s) when it was measured."""

    channels_last: bool
    why: str  # measured | forward-only | cuda | forced | off
    rates: Optional[dict] = None  # {"nchw": img/s, "nhwc": img/s}

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def label(self) -> str:
        """As the record stores it, e.g. ``nhwc:measured``."""
        return f"{'nhwc' if self.channels_last else 'nchw'}:{self.why}"


def forced_channels_last() -> Optional[bool]:
    """``TLBENCH_CHANNELS_LAST`` as a bool, or None when unset (tlbench.api.env)."""
    return env.channels_last()


class Tuner:
    """Chooses, and remembers for later cells, layouts and inference batches on one device."""

    def __init__(self, device: torch.device, allow_nhwc: bool = True):
        self.device, self.allow_nhwc = device, allow_nhwc
        self.decisions: dict[Hashable, FormatChoice | int] = {}  # layouts, batch sizes

    def layout(
        self,
        model: StagedModel,
        first: int,
        probe: Callable[[], tuple[torch.Tensor, torch.Tensor]],
        key: Hashable,
    ) -> FormatChoice:
        """The layout for a phase whose stages[first:] and head train.

        ``probe()`` gives one training batch as that part sees it (prefix outputs,
        labels); it is only called when a measurement is needed.
        """
        forced = forced_channels_last()
        if forced is not None:
            return FormatChoice(forced, "forced")
        if not self.allow_nhwc:
            return FormatChoice(False, "off")
        if self.device.type == "cuda":
            return FormatChoice(True, "cuda")  # tensor cores want NHWC
        if first >= len(model.stages):
            return FormatChoice(True, "forward-only")
        if key not in self.decisions:
            self.decisions[key] = measure(model, first, *probe())
        return self.decisions[key]

    def inference_plan(self, key: Hashable, train_batch: int) -> BatchPlan:
        """How to batch an inference pass: fixed, or timed on its first batches (CPU)."""
        if self.device.type == "cuda":
            return BatchPlan(2 * train_batch)  # no activations kept: twice the training batch
        key = ("inference", key)
        if key in self.decisions:
            return BatchPlan(self.decisions[key])
        return BatchPlan(INFERENCE_TRIAL[0], lambda size: self.decisions.setdefault(key, size))


class BatchPlan:
    """Runs ``work(slice)`` over ``total`` items in batches of ``size``; with ``on_choice``
    the first batches follow ``INFERENCE_TRIAL`` and the faster size per item is kept."""

    def __init__(self, size: int, on_choice: Optional[Callable[[int], object]] = None):
        self.size, self.on_choice = size, on_choice

    def run(self, total: int, work: Callable[[slice], None]) -> None:
        start = 0
        if self.on_choice is not None and total >= 2 * sum(INFERENCE_TRIAL):
            start = self._trial(work)
        for lo in range(start, total, self.size):
            work(slice(lo, min(lo + self.size, total)))

    def _trial(self, work: Callable[[slice], None]) -> int:
        """Real batches of the pass in the trial's sizes; returns where the pass goes on."""
        seconds_per_item: dict[int, float] = {}
        seen: set[int] = set()
        start = 0
        for size in INFERENCE_TRIAL:
            began = time.perf_counter()
            work(slice(start, start + size))
            if size in seen:  # the first batch of a size pays one-off kernel setup
                seconds_per_item[size] = (time.perf_counter() - began) / size
            seen.add(size)
            start += size
        self.size = min(seconds_per_item, key=seconds_per_item.__getitem__)
        self.on_choice(self.size)
        return start


def measure(
    model: StagedModel, first: int, inputs: torch.Tensor, labels: torch.Tensor
) -> FormatChoice:
    """Time training steps of stages[first:] + head in both layouts, on copies.

    The layouts take turns, step by step, and each is scored by its median step: the
    speed of a shared machine drifts, and both layouts then see the same drift.
    """
    tail = nn.Sequential(*list(model.stages)[first:], model.head)
    layouts = (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last))
    steps = {name: _trial_step(tail, inputs, labels, layout) for name, layout in layouts}
    for step in steps.values():
        step()  # one-off kernel setup and allocations: not scored
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(TRIAL_STEPS):
        for name, step in steps.items():
            seconds[name].append(step())
    rates = {name: round(len(labels) / statistics.median(s), 1) for name, s in seconds.items()}
    return FormatChoice(rates["nhwc"] > rates["nchw"], "measured", rates)


def _trial_step(
    tail: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, layout: torch.memory_format
) -> Callable[[], float]:
    """A function running one training step of a copy of ``tail`` in ``layout``; it
    returns the step's seconds."""
    tail = eager_copy(tail).to(memory_format=layout)
    x = inputs.contiguous(memory_format=layout) if inputs.dim() == 4 else inputs
    params = [p for p in tail.parameters() if p.requires_grad]
    fused = inputs.device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(params, lr=0.0, fused=fused)  # the phase's optimizer kind

    def step() -> float:
        synchronize(inputs.device)
        started = time.perf_counter()
        loss = F.cross_entropy(tail(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(inputs.device)
        return time.perf_counter() - started

    return step


def eager_copy(module: nn.Module) -> nn.Module:
    """A deep copy that runs eagerly even where ``module.compile()`` was called: a trial or
    a folded copy must not pay (or trigger) compilation."""
    clone = copy.deepcopy(module)
    for m in clone.modules():
        m._compiled_call_impl = None
    return clone
