"""Learning-rate schedules over a cell's whole budget (``--schedule``).

``constant`` is Adam at the cell's LR throughout.  ``cosine`` warms up linearly over the
first 5% of the steps, then decays to zero at the end of the budget, as timm's and
fastai's fine-tuning recipes do.  The factor is a function of the global step alone, so a
paused and resumed training (tlbench.train.lr_search) follows the same schedule, and every phase
of a multi-phase plan scales its own groups' LRs (e.g. two_stage's backbone at x0.1) by
the same factor.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

SCHEDULES = ("constant", "cosine")
WARMUP_FRACTION = 0.05


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base LRs for optimizer step ``step`` (0-based) of ``total_steps``."""
    if schedule == "constant":
        return 1.0
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def apply(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set each group's LR to its base LR (``base_lr``, set at creation) times ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
