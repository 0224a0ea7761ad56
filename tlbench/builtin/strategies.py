"""Built-in freeze strategies, registered through the same hook as any plugin."""

from __future__ import annotations

from typing import Optional

from tlbench.errors import TlbenchError
from tlbench.hookspecs import hookimpl
from tlbench.specs import Phase, StrategySpec

TWO_STAGE_LR_SCALE = 0.1  # the seeds' method: fine-tune at a tenth of the head's LR


def _int_arg(name: str, arg: Optional[str], default: int, low: int = 1) -> int:
    text = arg if arg is not None else str(default)
    if not text.isdigit() or int(text) < low:
        raise TlbenchError(
            f"strategy {name}:{text} is invalid: the argument must be an integer >= {low} "
            f"(e.g. {name}:{default})."
        )
    return int(text)


def linear_probe(num_stages: int, arg: Optional[str]) -> list[Phase]:
    return [Phase("head")]


def partial(num_stages: int, arg: Optional[str]) -> list[Phase]:
    k = min(_int_arg("partial", arg, 2), num_stages)
    return [Phase(f"last{k}", train_stages=list(range(num_stages - k, num_stages)))]


def full(num_stages: int, arg: Optional[str]) -> list[Phase]:
    return [Phase("all", train_stages=list(range(num_stages)))]


def two_stage(num_stages: int, arg: Optional[str]) -> list[Phase]:
    return [
        Phase("head", epoch_fraction=0.5),
        Phase("finetune", epoch_fraction=0.5, train_stages=list(range(num_stages)),
              lr_scale=TWO_STAGE_LR_SCALE),
    ]


@hookimpl
def register_strategies(register):
    register(StrategySpec("linear_probe", "backbone frozen (BatchNorm in eval), new head "
                          "trained", linear_probe))
    register(StrategySpec("partial", "last k stages + head train (partial:k, default k=2)",
                          partial, default_arg="2"))
    register(StrategySpec("full", "every parameter trains at the base LR", full))
    register(StrategySpec("two_stage", "head only for half the epochs, then everything at "
                          f"LR x {TWO_STAGE_LR_SCALE}", two_stage))
