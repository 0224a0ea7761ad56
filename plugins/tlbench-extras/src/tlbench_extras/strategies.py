"""One freeze strategy: ``head_then_last`` (train the head, then also the last k stages).

A strategy plugin registers a :class:`tlbench.api.specs.StrategySpec` whose ``plan`` maps a
backbone's stage count (and the optional ``name:arg`` argument) to training phases.
tlbench does the rest for any backbone: freezing, BatchNorm modes, the feature cache
for the frozen prefix, and checking afterwards that frozen tensors did not change.
"""

from __future__ import annotations

from typing import Optional

from tlbench.api.errors import TlbenchError
from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import Phase, StrategySpec

FINETUNE_LR_SCALE = 0.1  # the last stages join at a tenth of the head's learning rate


def head_then_last(num_stages: int, arg: Optional[str]) -> list[Phase]:
    """Half the epochs on the head alone, then the last ``k`` stages join it."""
    text = arg or "1"
    if not text.isdigit() or int(text) < 1:
        raise TlbenchError(
            f"strategy head_then_last:{text} is invalid: the argument must be an integer "
            ">= 1, the number of last stages to fine-tune (e.g. head_then_last:2)."
        )
    k = min(int(text), num_stages)
    last = list(range(num_stages - k, num_stages))
    return [
        Phase("head", epoch_fraction=0.5),
        Phase(f"last{k}", epoch_fraction=0.5, train_stages=last, lr_scale=FINETUNE_LR_SCALE),
    ]


@hookimpl
def register_strategies(register):
    register(
        StrategySpec(
            "head_then_last",
            f"head for half the epochs, then the last k stages too at LR x {FINETUNE_LR_SCALE} "
            "(head_then_last:k, default k=1)",
            head_then_last,
            default_arg="1",
        )
    )
