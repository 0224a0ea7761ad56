"""Freeze verification must catch a strategy that secretly changes what it calls frozen."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_run import run_tiny

from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import Phase, StrategySpec


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


class FullSneakyBN:
    """``full`` with a frozen BatchNorm policy whose stage-0 BatchNorm ignores eval()."""

    @hookimpl
    def register_strategies(self, register):
        plan = lambda n, a: [Phase("all", train_stages=list(range(n)), bn="frozen")]  # noqa: E731
        register(StrategySpec("full_sneaky_bn", "bn frozen, lies", plan, prepare=_keep_bn_training))


def _stats(model_state: dict) -> dict:
    return {k: v.clone() for k, v in model_state.items() if "running_" in k}


def test_frozen_bn_policy_keeps_statistics_bit_for_bit(tiny_plugin, tmp_path):
    """Every stage trains, BatchNorm frozen: weights move, running statistics do not."""
    record = run_tiny(tmp_path, "full:bn=frozen")
    assert record["status"] == "ok" and record["strategy"] == "full:bn=frozen"
    assert record["bn_policy"] == "frozen"
    assert record["freeze_verified"] is True, record["freeze_violations"]


def test_frozen_bn_policy_is_verified(tiny_plugin, tmp_path):
    """A stage that keeps batch statistics under a frozen policy is caught, although all
    of its parameters train (the old check only looked at fully frozen modules)."""
    record = run_tiny(tmp_path, "full_sneaky_bn", extra_plugins=[FullSneakyBN()])
    assert record["freeze_verified"] is False
    assert "stages.0.1.running_mean" in record["freeze_violations"]


def test_train_bn_policy_adapts_statistics(tiny_plugin, tmp_path):
    record = run_tiny(tmp_path, "full:bn=train")
    assert record["bn_policy"] == "train" and record["freeze_verified"] is True


def test_bn_modes_per_policy():
    """Frozen stages always eval; trained stages' BatchNorm follows the phase's policy."""
    from torch import nn

    from tlbench.api.model import StagedModel
    from tlbench.train.phases import set_phase_modes

    stages = [nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)) for _ in range(2)]
    model = StagedModel(
        [*stages[:1], nn.Sequential(*stages[1], nn.AdaptiveAvgPool2d(1), nn.Flatten())],
        4,
        ["a", "b"],
    )
    model.set_head(2)
    set_phase_modes(model, [1], "train")
    assert not model.stages[0][1].training and model.stages[1][1].training
    assert model.stages[1][0].training and model.head.training
    set_phase_modes(model, [1], "frozen")
    assert not model.stages[1][1].training and model.stages[1][0].training


def test_eval_mode_restores_each_modules_own_flag_even_on_error():
    """A frozen-BatchNorm phase mixes modes inside a stage: a recursive train() after an
    inference pass would undo it, eval_mode must not."""
    from torch import nn

    from tlbench.train.modes import eval_mode

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("a failing pass")
    assert model[0].training and not model[1].training


def test_two_stage_keeps_head_optimizer_state(tiny_plugin, tmp_path):
    """The phase change adds the backbone at LR x 0.1; the head keeps its LR and moments."""
    import torch

    from tlbench.api.model import StagedModel
    from tlbench.builtin.strategies import two_stage
    from tlbench.train.phases import trainable_groups

    phases = two_stage(3, None)
    assert [p.bn for p in phases] == ["train", "frozen"]  # head-only phase: no stage trains
    model = StagedModel([torch.nn.Linear(2, 2) for _ in range(3)], 2, list("abc"))
    model.set_head(2)
    groups = trainable_groups(model, phases[1], [0, 1, 2], 0.01)
    assert groups[0]["lr"] == 0.01  # the head
    assert {g["lr"] for g in groups[1:]} == {0.01 * 0.1}
    record = run_tiny(tmp_path, "two_stage")
    assert record["bn_policy"] == "frozen,frozen" and record["freeze_verified"] is True


def test_phase_change_carries_adam_state():
    import torch

    from tlbench.train.phases import carry_state

    head, stage = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    first = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(3):
        first.zero_grad()
        head(torch.ones(1, 2)).sum().backward()
        first.step()
    second = torch.optim.Adam(
        [{"params": list(head.parameters()), "lr": 0.1}, {"params": stage.parameters()}], lr=0.01
    )
    carry_state(first, second)
    assert int(second.state[head.weight]["step"]) == 3
    assert torch.equal(second.state[head.weight]["exp_avg"], first.state[head.weight]["exp_avg"])
    assert stage.weight not in second.state  # new parameters start fresh
