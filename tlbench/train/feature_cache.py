"""Frozen-prefix feature cache.

When nothing before stage ``f`` trains, the output of stages[:f] (in eval mode) is a
pure function of (weights, resolution, images).  It is computed once and reused for
every epoch, strategy and seed that shares it.  A memory budget decides where it lives
(the device, host memory) or whether it is recomputed per batch.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Callable, Hashable, Optional, Union

import torch

from tlbench.api import env
from tlbench.api.model import StagedModel
from tlbench.data.preprocess import BatchAdapter
from tlbench.train.autotune import BatchPlan
from tlbench.train.device import synchronize
from tlbench.train.modes import eval_mode


def default_budgets(device: torch.device) -> tuple[int, int]:
    """(device bytes, host bytes) the cache may use; env TLBENCH_CACHE_BUDGET_MB caps host."""
    host = env.cache_budget_bytes()
    if host <= 0:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        host = pages // 4
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.4), host
    return 0, host


class FeatureCache:
    """Keyed store of prefix outputs, evicting the oldest entries to stay in budget."""

    def __init__(self, device: torch.device, budgets: Optional[tuple[int, int]] = None):
        self.device = device
        self.device_budget, self.host_budget = budgets or default_budgets(device)
        self.entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        # seconds each entry took to compute: every cell that uses it is charged this
        # (as if it had computed it), so a shared fill is never billed to the first cell
        self.fill_seconds: dict[Hashable, float] = {}
        self.paid_seconds = 0.0  # fills actually computed, summed (a one-time cost)

    def used(self, where: str) -> int:
        kind = "cpu" if where == "host" else self.device.type
        return sum(
            t.numel() * t.element_size() for t in self.entries.values() if t.device.type == kind
        )

    def place_for(self, nbytes: int) -> str:
        """Where a tensor of ``nbytes`` fits: ``device``, ``host`` or ``none``."""
        if self.device.type == "cuda" and nbytes <= self.device_budget:
            return "device"
        return "host" if nbytes <= self.host_budget else "none"

    def get(
        self,
        key: Hashable,
        nbytes: Union[int, Callable[[], int]],
        compute: Callable[[torch.device], torch.Tensor],
    ) -> tuple[Optional[torch.Tensor], str]:
        """Cached tensor and where it lives, computing it on a miss; (None, 'none') if too big.

        ``nbytes`` may be a function: it is then asked only on a miss.
        """
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key], self._label(self.entries[key])
        self.misses += 1
        nbytes = nbytes() if callable(nbytes) else nbytes
        where = self.place_for(nbytes)
        if where == "none":
            return None, "none"
        self._evict(where, nbytes)
        target = self.device if where == "device" else torch.device("cpu")
        started = time.perf_counter()
        tensor = compute(target)
        synchronize(self.device)
        self.fill_seconds[key] = time.perf_counter() - started
        self.paid_seconds += self.fill_seconds[key]
        if where == "host" and self.device.type == "cuda":
            tensor = tensor.pin_memory()  # batches gathered from it copy asynchronously
        self.entries[key] = tensor
        return tensor, self._label(tensor)

    def _label(self, tensor: torch.Tensor) -> str:
        """``device`` when the features sit where the model runs, else ``host``."""
        return "device" if tensor.device.type == self.device.type else "host"

    def _evict(self, where: str, nbytes: int) -> None:
        budget = self.device_budget if where == "device" else self.host_budget
        kind = self.device.type if where == "device" else "cpu"
        for key in list(self.entries):
            if self.used(where) + nbytes <= budget:
                return
            if self.entries[key].device.type == kind:
                del self.entries[key]


@torch.no_grad()
def compute_prefix(
    model: StagedModel,
    stop: int,
    images: torch.Tensor,
    adapter: BatchAdapter,
    batches: Union[int, BatchPlan],
    target: torch.device,
    autocast: bool,
    forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """stages[:stop] applied in eval mode to every image, batched, stored on ``target``.

    ``batches``: a batch size, or a :class:`~tlbench.train.autotune.BatchPlan` that may time
    its first batches to choose one.  ``forward``: what computes stages[:stop] of a batch
    (default ``model.forward_stages``; the trainer passes its BatchNorm-folded copy).

    Every module's own mode is restored afterwards (tlbench.train.modes.eval_mode).
    """
    outputs = []

    def batch(index: slice) -> None:
        x = adapter(images[index])
        with _autocast(x.device, autocast):
            y = forward(x) if forward else model.forward_stages(x, 0, stop)
        outputs.append(y.to(target, non_blocking=True))

    with eval_mode(model.stages):
        plan = batches if isinstance(batches, BatchPlan) else BatchPlan(batches)
        plan.run(len(images), batch)
        if target.type == "cpu":
            synchronize(images.device)  # device-to-host copies above may still be in flight
    return torch.cat(outputs)


def prefix_bytes(
    model: StagedModel,
    stop: int,
    sample: torch.Tensor,
    adapter: BatchAdapter,
    count: int,
    autocast: bool,
) -> int:
    """Memory the prefix outputs of ``count`` images would take (one probe image)."""
    probe = compute_prefix(model, stop, sample[:1], adapter, 1, sample.device, autocast)
    return probe.element_size() * probe[0].numel() * count


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda"
    )
