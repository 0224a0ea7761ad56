"""A frozen prefix for inference with each BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one
convolution with scaled weights and a shifted bias.  Folding removes every BatchNorm pass
from the feature-cache fill and the test pass (measured on 2 CPU cores, resnet18 at
64 px, NHWC: BatchNorm was 5% of the forward time).  The pairs are found by running
one probe batch with hooks (a BatchNorm whose input *is* a convolution's output), so no
per-architecture code; the folded copy must then reproduce the original prefix on that
batch (``RTOL``/``ATOL``), otherwise it is not used.  The model itself is never changed.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from tlbench.api.model import StagedModel
from tlbench.train.autotune import eager_copy
from tlbench.train.modes import eval_mode

RTOL, ATOL = 1e-4, 1e-4  # folded vs plain prefix on the probe batch (fp32 rounding only)


@torch.no_grad()
def folded_prefix(model: StagedModel, stop: int, probe: torch.Tensor) -> Optional[nn.Module]:
    """stages[:stop] in eval mode with BatchNorms folded, or None (nothing to fold, or
    the folded copy does not reproduce the prefix on ``probe``)."""
    prefix = eager_copy(nn.Sequential(*list(model.stages)[:stop])).eval()
    pairs = _conv_bn_pairs(prefix, probe)
    folded = [pair for pair in pairs if _fold(prefix, *pair)]
    if not folded:
        return None
    with eval_mode(model.stages):
        expected = model.forward_stages(probe, 0, stop)
    return prefix if torch.allclose(prefix(probe), expected, rtol=RTOL, atol=ATOL) else None


def _conv_bn_pairs(prefix: nn.Module, probe: torch.Tensor) -> list[tuple[nn.Conv2d, str]]:
    """(convolution, qualified name of the BatchNorm fed directly by its output)."""
    outputs: dict[int, nn.Conv2d] = {}
    kept: list[torch.Tensor] = []  # holds outputs alive so their ids stay unique
    pairs: list[tuple[nn.Conv2d, str]] = []
    names = {module: name for name, module in prefix.named_modules()}

    def after_conv(conv, _inputs, output):
        outputs[id(output)] = conv
        kept.append(output)

    def before_bn(bn, inputs):
        conv = outputs.get(id(inputs[0]))
        if conv is not None:
            pairs.append((conv, names[bn]))

    hooks = [m.register_forward_hook(after_conv) for m in prefix.modules() if _foldable(m)]
    hooks += [
        m.register_forward_pre_hook(before_bn)
        for m in prefix.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    try:
        prefix(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return pairs


def _foldable(module: nn.Module) -> bool:
    """A convolution whose weight and bias are plain parameters (timm's Conv2dSame too;
    not a LoRA-parametrized one)."""
    return isinstance(module, nn.Conv2d) and not parametrize.is_parametrized(module)


def _fold(prefix: nn.Module, conv: nn.Conv2d, bn_name: str) -> bool:
    """Scale ``conv`` by the BatchNorm and put what is left of it in its place."""
    parent_name, _, attr = bn_name.rpartition(".")
    parent = prefix.get_submodule(parent_name)
    bn = getattr(parent, attr)
    rest = _what_remains(bn)
    if rest is None or not bn.track_running_stats or bn.running_var is None:
        return False
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    layout = (
        torch.channels_last
        if conv.weight.is_contiguous(memory_format=torch.channels_last)
        and not conv.weight.is_contiguous()
        else torch.contiguous_format
    )
    weight = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous(memory_format=layout)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    setattr(parent, attr, rest)
    return True


def _what_remains(bn: nn.BatchNorm2d) -> Optional[nn.Module]:
    """A plain BatchNorm leaves nothing; timm's BatchNormAct2d leaves its dropout and
    activation; any other subclass is not folded (its forward is unknown)."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if hasattr(bn, "act") and hasattr(bn, "drop") and type(bn).__name__ == "BatchNormAct2d":
        return nn.Sequential(bn.drop, bn.act)
    return None
