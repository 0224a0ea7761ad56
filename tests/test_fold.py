"""BatchNorm folded into the convolution before it: same outputs, fewer passes, the model
untouched, and no fold where a folded copy would compute something else."""

from __future__ import annotations

import torch
from helpers.plugins import tiny_staged
from timm.layers import BatchNormAct2d
from torch import nn

from tlbench.api.model import StagedModel
from tlbench.backbones.weights import WeightsChoice
from tlbench.train.bn_fold import ATOL, RTOL, folded_prefix


def batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def trained_statistics(model: StagedModel) -> StagedModel:
    """Non-trivial running statistics and affine parameters, as after real training."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.forward_stages(torch.randn(8, 3, 12, 12) * 3 + 1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    return model


def test_folded_prefix_matches_the_model_without_batch_norm_passes():
    torch.manual_seed(0)
    model = trained_statistics(tiny_staged(WeightsChoice("random")))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = torch.randn(4, 3, 12, 12)
    folded = folded_prefix(model, 2, probe)
    assert folded is not None and batch_norms(folded) == 0 and batch_norms(model) == 3
    x = torch.randn(16, 3, 12, 12)
    model.eval()
    with torch.no_grad():
        expected = model.forward_stages(x, 0, 2)
        assert torch.allclose(folded(x), expected, rtol=RTOL, atol=ATOL)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # the model itself is never changed


def test_a_convolution_output_used_twice_is_not_folded():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding the conv would change the skip path too

    model = trained_statistics(
        StagedModel(
            [Residual(), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())], 3, ["a", "b"]
        )
    )
    assert folded_prefix(model, 2, torch.randn(4, 3, 12, 12)) is None


def test_timm_batch_norm_act_keeps_its_activation():
    stage = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), BatchNormAct2d(4))
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = trained_statistics(StagedModel([stage, pool], 4, ["conv", "pool"]))
    folded = folded_prefix(model, 1, torch.randn(4, 3, 12, 12))
    assert folded is not None and batch_norms(folded) == 0
    assert any(isinstance(m, nn.ReLU) for m in folded.modules())  # timm's default act
