"""A backbone as an ordered list of stages plus a head.

Splitting every network the same way is what lets strategies freeze "the last k
stages" without per-model code, and lets the runner cache the output of a frozen
prefix of stages.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn


class StagedModel(nn.Module):
    """``head(stages[-1](...stages[0](x)))``; the last stage ends in pooled features."""

    def __init__(self, stages: Sequence[nn.Module], num_features: int, stage_names: Sequence[str]):
        super().__init__()
        if len(stages) != len(stage_names):
            raise ValueError("one name per stage is required")
        self.stages = nn.ModuleList(stages)
        self.stage_names = list(stage_names)
        self.num_features = num_features
        self.head: nn.Module = nn.Identity()

    @classmethod
    def from_modules(
        cls,
        stages: Sequence[nn.Module] | dict[str, nn.Module],
        num_features: int,
        weights: object = None,
        weights_source: str | None = None,
    ) -> StagedModel:
        """A StagedModel from plain torch modules, for backbones that are not timm models.

        ``stages`` is a list (named ``stage0``, ``stage1``, ...) or a ``{name: module}``
        dict in forward order; the last stage must end in pooled ``[B, num_features]``
        features (e.g. ``nn.AdaptiveAvgPool2d(1), nn.Flatten()``).  ``weights_source``
        (what the record says the weights are) defaults to ``weights.label()`` when
        ``weights`` (the :class:`tlbench.backbones.weights.WeightsChoice` given to ``build``) is
        passed, else ``"random"``.
        """
        if isinstance(stages, dict):
            names, modules = list(stages), list(stages.values())
        else:
            modules = list(stages)
            names = [f"stage{i}" for i in range(len(modules))]
        model = cls(modules, num_features, names)
        if weights_source is None:
            weights_source = weights.label() if weights is not None else "random"
        model.weights_source = weights_source
        return model

    def forward_stages(
        self, x: torch.Tensor, start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        for stage in list(self.stages)[start:stop]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_stages(x))

    def set_head(self, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> None:
        """Attach a fresh head: Linear, or MLP (Linear-ReLU-[Dropout]-Linear) if hidden > 0."""
        self.head = make_head(self.num_features, num_classes, hidden, dropout)


def make_head(
    num_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0
) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(num_features, num_classes)
    layers: list[nn.Module] = [nn.Linear(num_features, hidden), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


def count_params(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)
