"""Inference throughput, measured the way timm's benchmark does it.

Once per network (a backbone's stages at one resolution with one head shape): the
trained model with LoRA merged into its weights (exact: ``W + s·B·A`` is one matrix)
and every BatchNorm folded into its convolution (exact in eval mode), a batch size
fixed before timing, warm-up iterations, then several timed repetitions from raw uint8
images (adaptation included); the median is reported.  Every strategy of a backbone
that ends in the same network gets the same figure, as it should.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Hashable

import torch
from torch.nn.utils import parametrize

from tlbench.api.model import StagedModel, count_params
from tlbench.data.preprocess import BatchAdapter
from tlbench.train.bn_fold import folded_prefix
from tlbench.train.device import synchronize

WARMUP = 2  # untimed batches (allocator, cudnn autotune, caches)
REPEATS = 5  # timed repetitions; the median is reported
MIN_IMAGES = {"cpu": 256, "cuda": 4096}  # per repetition, so timer noise stays small


def merged_copy(model: StagedModel) -> tuple[StagedModel, bool]:
    """An eval-mode copy with every parametrization (LoRA) merged into its weight."""
    merged = copy.deepcopy(model).eval()
    found = False
    for module in list(merged.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                found = True
    return merged, found


def network_key(model: StagedModel, resolution: int, batch: int) -> Hashable:
    return (
        tuple(model.stage_names),
        count_params(model.parameters()),
        resolution,
        batch,
        tuple(p.shape for p in model.head.parameters()),
    )


@torch.no_grad()
def images_per_second(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch: int,
    device: torch.device,
) -> float:
    """Median images/s of ``forward`` over REPEATS timed runs of one fixed batch."""
    x = images[:batch]
    if len(x) < batch:  # fewer test images than a batch: repeat them
        x = x.repeat((batch + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:batch]
    per_rep = max(1, -(-MIN_IMAGES.get(device.type, 256) // batch))
    for _ in range(WARMUP):
        forward(x)
    rates = []
    for _ in range(REPEATS):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(per_rep):
            forward(x)
        synchronize(device)
        rates.append(per_rep * batch / (time.perf_counter() - t0))
    return round(statistics.median(rates), 2)


def measure(
    model: StagedModel, adapter: BatchAdapter, images: torch.Tensor, batch: int, autocast
) -> dict:
    """``infer_throughput`` and how it was measured, for the record."""
    merged, had_lora = merged_copy(model)
    folded = folded_prefix(merged, len(merged.stages), adapter(images[:16]))
    stages = list(folded) if folded is not None else list(merged.stages)

    def forward(raw: torch.Tensor) -> torch.Tensor:
        x = adapter(raw)
        with autocast():
            for stage in stages:
                x = stage(x)
            return merged.head(x)

    rate = images_per_second(forward, images, batch, images.device)
    return {
        "infer_throughput": rate,
        "infer_batch": batch,
        "infer_lora_merged": had_lora,
        "infer_folded_batchnorm": folded is not None,
    }
