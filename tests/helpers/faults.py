"""A plugin that misbehaves on purpose: faults injected through the public plugin API.

Every backbone is the tiny test CNN with one defect, so a cell costs about a second.
"""

from __future__ import annotations

import torch
from torch import nn

from helpers.plugins import tiny_staged
from tlbench.api.hookspecs import hookimpl
from tlbench.api.model import StagedModel
from tlbench.api.specs import BackboneSpec, Phase, StrategySpec

OOM_LIMIT = 16  # oom_over_16: training batches above this "run out of CUDA memory"
NAN_AFTER = 5  # nan_after_5: training forward passes after this one produce NaN


class NanAfter(nn.Module):
    """Passes through, then poisons its output with NaN once ``after`` training steps ran."""

    def __init__(self, inner: nn.Module, after: int):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


class OomAbove(nn.Module):
    """Raises torch's real CUDA out-of-memory error for training batches above ``limit``."""

    def __init__(self, inner: nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (fake: batch {x.shape[0]} "
                f"> {self.limit})"
            )
        return self.inner(x)


def sabotaged(wrap):
    def build(weights) -> StagedModel:
        model = tiny_staged(weights)
        model.stages[0] = wrap(model.stages[0])
        return model

    return build


def build_raises(weights):
    raise RuntimeError("plugin bug: build exploded")


def build_not_staged(weights) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))  # a whole classifier


def build_wrong_width(weights) -> StagedModel:
    tiny = tiny_staged(weights)
    return StagedModel(list(tiny.stages), 32, tiny.stage_names)  # stages give 16


def _backbone(name: str, build) -> BackboneSpec:
    return BackboneSpec(
        name,
        build,
        input_size=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description=f"faulty test CNN: {name}",
        imagenet_sources=("test-random",),
    )


def wrong_head_prepare(model: StagedModel, arg) -> None:
    model.head = nn.Linear(7, 10)  # 7 inputs, but the features are 16 wide: a shape error


class FaultPlugin:
    @hookimpl
    def register_backbones(self, register):
        register(_backbone("broken", build_raises))
        register(_backbone("nan_after_5", sabotaged(lambda s: NanAfter(s, NAN_AFTER))))
        register(_backbone("oom_over_16", sabotaged(lambda s: OomAbove(s, OOM_LIMIT))))
        register(_backbone("oom_always", sabotaged(lambda s: OomAbove(s, 0))))
        register(_backbone("not_staged", build_not_staged))
        register(_backbone("wrong_width", build_wrong_width))

    @hookimpl
    def register_strategies(self, register):
        register(
            StrategySpec(
                "wrong_head",
                "test: prepare() fits a head of the wrong width",
                lambda n, arg: [Phase("all", train_stages=list(range(n)))],
                prepare=wrong_head_prepare,
            )
        )
