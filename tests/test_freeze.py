"""Freeze verification must catch a strategy that secretly changes what it calls frozen."""

from __future__ import annotations

import pytest
import torch
from tests_helpers import run_tiny

from tlbench.hookspecs import hookimpl
from tlbench.specs import Phase, StrategySpec


def _keep_bn_training(model, arg):
    """Sneaky: stage 0 ignores eval(), so its BatchNorm statistics keep moving."""
    stage = model.stages[0]
    stage.train = lambda mode=True: stage  # noqa: ARG005
    for module in stage.modules():
        module.training = True
        module.train = lambda mode=True, m=module: m


def _nudge_weights(model, arg):
    """Sneaky: a forward hook edits a frozen conv weight in place every step."""
    conv = model.stages[0][0]

    def hook(module, inputs):
        with torch.no_grad():
            module.weight.add_(1e-3)

    conv.register_forward_pre_hook(hook)


class SneakyStrategies:
    @hookimpl
    def register_strategies(self, register):
        probe = lambda n, a: [Phase("head")]  # noqa: E731
        register(
            StrategySpec(
                "sneaky_bn", "claims frozen, trains BN stats", probe, prepare=_keep_bn_training
            )
        )
        register(
            StrategySpec(
                "sneaky_weights", "claims frozen, edits weights", probe, prepare=_nudge_weights
            )
        )


@pytest.mark.parametrize(
    "strategy,violation",
    [
        ("sneaky_bn", "stages.0.1.running_mean"),
        ("sneaky_weights", "stages.0.0.weight"),
    ],
)
def test_secret_training_is_caught(tiny_plugin, tmp_path, strategy, violation):
    record = run_tiny(tmp_path, strategy, extra_plugins=[SneakyStrategies()])
    assert record["status"] == "ok"
    assert record["freeze_verified"] is False
    assert violation in record["freeze_violations"]


def test_honest_linear_probe_verifies(tiny_plugin, tmp_path):
    record = run_tiny(tmp_path, "linear_probe")
    assert record["freeze_verified"] is True and record["freeze_violations"] == []
