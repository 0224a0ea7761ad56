"""FLOPs a cell executes and the matmul peak they are compared with (MFU).

What is counted, and how: :class:`torch.utils.flop_counter.FlopCounterMode` counts the
matrix multiplies and convolutions of a real forward (and backward) pass, 2 FLOPs per
multiply-add.  Elementwise work (BatchNorm, activations, pooling, the optimizer) is not
counted, as in the usual definition of model FLOPs.  Nothing is estimated from layer
shapes by hand and no "x3" rule is applied: the backward pass of the stages a phase
trains is run and counted, so a frozen stage costs its forward only and the first
trainable layer computes no input gradient.

MFU here = FLOPs a pipeline really executed / its wall seconds / a peak measured in
the same process on the same device with one large matmul (fp32 on CPU, bf16 on CUDA).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from tlbench.api.model import StagedModel
from tlbench.api.specs import Phase
from tlbench.train.device import synchronize


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (matmuls and convolutions, forward and backward) that ``fn()`` runs."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def _conv_backward_flops(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
    _output_padding, _groups, output_mask, out_shape=None, **kwargs,
) -> int:  # fmt: skip
    """Each gradient (input, weight) of a convolution repeats every multiply-add of its
    forward once.  torch's own formula ignores ``groups`` for the weight gradient and so
    counts a depthwise convolution's backward C times over (torch 2.14)."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


@dataclass(frozen=True)
class ModelFlops:
    """Forward FLOPs per image of each stage and of the head, in eval mode."""

    stages: tuple[int, ...]
    head: int

    @property
    def forward(self) -> int:
        """The whole model, one image: the ``flops_per_image`` of ``tlbench bench``."""
        return sum(self.stages) + self.head

    def prefix(self, first: int) -> int:
        """stages[:first]: what the feature cache computes once per image."""
        return sum(self.stages[:first])

    def rest(self, first: int) -> int:
        """stages[first:] and the head."""
        return sum(self.stages[first:]) + self.head


@torch.no_grad()
def model_flops(model: StagedModel, resolution: int) -> ModelFlops:
    """Per-stage forward FLOPs of one ``resolution`` x ``resolution`` image."""
    model = copy.deepcopy(model).eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, resolution, resolution, device=device)
    per_stage = []
    for stage in model.stages:
        per_stage.append(count_flops(lambda s=stage, inp=x: s(inp)))
        x = stage(x)
    return ModelFlops(tuple(per_stage), count_flops(lambda: model.head(x)))


def train_step_flops(
    model: StagedModel, phase: Phase, resolution: int, num_classes: int, base_lr: float = 1e-3
) -> tuple[int, int]:
    """(first trainable stage, forward+backward FLOPs per image from there on) in ``phase``.

    Runs one real training step (batch of 2, BatchNorm in its phase mode) under the
    counter with the phase's parameters set trainable, on a copy of ``model``; the
    frozen prefix runs outside the counter (the feature cache or a forward pass pays it,
    see :class:`ModelFlops`).
    """
    from tlbench.train.phases import phase_stages, set_phase_modes, trainable_groups

    model = copy.deepcopy(model)
    stages = phase_stages(phase, len(model.stages))
    first = stages[0] if stages else len(model.stages)
    trainable_groups(model, phase, stages, base_lr)
    set_phase_modes(model, stages, phase.bn)
    device = next(model.parameters()).device
    x = torch.zeros(2, 3, resolution, resolution, device=device)
    with torch.no_grad():
        x = model.forward_stages(x, 0, first)
    labels = torch.zeros(2, dtype=torch.long, device=device)

    def step() -> None:
        logits = model.head(model.forward_stages(x, first))
        F.cross_entropy(logits, labels[: len(logits)] % num_classes).backward()

    return first, count_flops(step) // 2


@dataclass(frozen=True)
class Peak:
    flops_per_second: float
    method: str  # what was timed, e.g. "fp32 matmul 2048x2048x2048, best of 5"


def matmul_peak(device: torch.device, seconds: float = 2.0, size: Optional[int] = None) -> Peak:
    """The FLOP/s of one large square matmul here: fp32 on CPU, bf16 on CUDA (best run).

    Runs at least 3 times and until ``seconds`` have been spent (at most 50 runs).
    """
    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (2048, torch.float32)
    n = size or n
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: allocator, library init
    best, runs, spent = float("inf"), 0, 0.0
    while runs < 3 or (spent < seconds and runs < 50):
        synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        elapsed = time.perf_counter() - t0
        best, runs, spent = min(best, elapsed), runs + 1, spent + elapsed
    name = "bf16" if cuda else "fp32"
    return Peak(2 * n**3 / best, f"{name} matmul {n}x{n}x{n}, best of {runs}")
