"""Low-rank adapters (LoRA) on a backbone's Conv2d and Linear weights.

``W' = W + (alpha / r) * (B @ A).view(W.shape)`` with ``W`` frozen and only ``A``
(r x fan_in) and ``B`` (out x r) trained.  ``B`` starts at zero, so before training the
adapted model computes exactly what the backbone did.

The delta is a ``torch.nn.utils.parametrize`` parametrization of ``weight`` rather than a
wrapper module: any layer whose forward reads ``self.weight`` gets the adapter without
replacing that forward.  That matters for timm, whose ``Conv2dSame`` (TF "same" padding
in efficientnet_lite0) and grouped/depthwise convolutions have their own forward code;
peft's conv LoRA adds a separate activation path and does not cover grouped convs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from tlbench.api.model import StagedModel

LORA_PARAMS = ("lora_A", "lora_B")


class LoRADelta(nn.Module):
    """The parametrization ``weight -> weight + scale * (B @ A)`` for one layer."""

    def __init__(self, shape: torch.Size, rank: int, alpha: float):
        super().__init__()
        out_features, fan_in = shape[0], math.prod(shape[1:])
        self.shape = tuple(shape)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear / loralib

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.lora_B @ self.lora_A).view(self.shape)
        return weight + self.scale * delta.to(weight.dtype)


def adaptable(module: nn.Module, rank: int) -> bool:
    """Conv2d/Linear layers where a rank-``rank`` update is really low-rank.

    A layer whose weight matrix (out x fan_in) has a side <= rank would get a "low-rank"
    update at least as large as the layer itself; such layers stay frozen.
    """
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        return False
    if parametrize.is_parametrized(module, "weight"):
        return False
    shape = module.weight.shape
    return rank < min(shape[0], math.prod(shape[1:]))


def add_lora(model: StagedModel, rank: int, alpha: float | None = None) -> int:
    """Adapt every adaptable layer of the backbone's stages (not the head); returns how many.

    ``alpha`` defaults to ``rank`` (scale 1), so the effective step size does not change
    with the rank.  Adapter parameters are named ``...parametrizations.weight.0.lora_A``.
    """
    layers = [m for m in model.stages.modules() if adaptable(m, rank)]
    for layer in layers:
        delta = LoRADelta(layer.weight.shape, rank, float(alpha or rank))
        delta.to(layer.weight.device)
        parametrize.register_parametrization(layer, "weight", delta)
    return len(layers)


def is_lora_param(name: str, param: nn.Parameter | None = None) -> bool:
    """Phase ``param_filter``: only adapter matrices train."""
    return name.rsplit(".", 1)[-1] in LORA_PARAMS


def lora_param_count(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if is_lora_param(n))
