"""Every built-in strategy trains exactly the parameters it claims, and nothing else.

The tiny backbone (tests/helpers/plugins.py) has three stages, each Conv2d(bias=False) +
BatchNorm2d + ReLU, and a Linear(16, 10) head.  Its parameter counts, by hand:

    stage 0: conv 3->8 3x3 = 216,    BN(8) = 8 weights + 8 biases
    stage 1: conv 8->16 3x3 = 1152,  BN(16) = 16 + 16
    stage 2: conv 16->16 3x3 = 2304, BN(16) = 16 + 16
    head: 16*10 + 10 = 170           total: 3922

Each test runs a real cell through the runner and compares what changed in training with
the expected trainable set, independently of the trainer's own freeze check.
"""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_run import run_tiny
from torch import nn

from tlbench.api.errors import TlbenchError
from tlbench.api.model import StagedModel
from tlbench.backbones.lora import add_lora, is_lora_param, lora_param_count
from tlbench.builtin.strategies import (
    STRATEGIES,
    gradual_unfreeze,
    register_strategies,
)
from tlbench.plan.cells import REFERENCE, Choices, expand
from tlbench.plan.settings import make_settings
from tlbench.plugins.registry import load_registry
from tlbench.train.loop import CellTrainer

HEAD = 16 * 10 + 10
CONV = {0: 3 * 8 * 9, 1: 8 * 16 * 9, 2: 16 * 16 * 9}
BN = {0: 8, 1: 16, 2: 16}  # channels: BN has that many weights and as many biases
TOTAL = sum(CONV.values()) + 2 * sum(BN.values()) + HEAD


def stage_params(*stages: int) -> int:
    return sum(CONV[i] + 2 * BN[i] for i in stages)


@pytest.fixture
def watched(monkeypatch):
    """Parameter values before/after training and each phase's optimizer LRs."""
    seen: dict = {"lrs": []}
    train, enter = CellTrainer.train, CellTrainer._enter_phase

    def watching_train(self):
        seen["before"] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        result = train(self)
        seen["after"] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        seen["bn_training"] = [
            m.training for m in self.model.modules() if isinstance(m, nn.BatchNorm2d)
        ]
        return result

    def watching_enter(self, phase):
        state = enter(self, phase)
        seen["lrs"].append([g["lr"] for g in state.optimizer.param_groups])
        return state

    monkeypatch.setattr(CellTrainer, "train", watching_train)
    monkeypatch.setattr(CellTrainer, "_enter_phase", watching_enter)
    return seen


def changed(seen: dict) -> set[str]:
    return {n for n, v in seen["before"].items() if not torch.equal(v, seen["after"][n])}


def names(seen: dict, keep) -> set[str]:
    return {n for n in seen["before"] if n.startswith("head.") or keep(n)}


def test_ten_strategies_with_descriptions():
    specs = []
    register_strategies(specs.append)
    assert [s.name for s in specs] == [
        "linear_probe",
        "partial",
        "full",
        "two_stage",
        "gradual_unfreeze",
        "discriminative_lr",
        "bitfit",
        "norm_only",
        "lora",
        "scratch",
    ]
    for spec in specs:
        assert spec.description and "\n" not in spec.description
    assert load_registry().names("strategies")[:10] == [s.name for s in specs]


@pytest.mark.parametrize(
    "strategy,expected",
    [
        ("bitfit", {"bias": sum(BN.values()) + HEAD}),
        ("norm_only", {"norm": 2 * sum(BN.values()) + HEAD}),
        ("discriminative_lr", {"all": TOTAL}),
        # rank 8: stage 0's conv (8 x 27) is not low-rank at 8, so it is left out
        ("lora", {"lora": 8 * (72 + 16) + 8 * (144 + 16) + HEAD}),
        ("lora:2", {"lora": 2 * (27 + 8) + 2 * (72 + 16) + 2 * (144 + 16) + HEAD}),
    ],
)
def test_trainable_counts_and_freeze(tiny_plugin, tmp_path, watched, strategy, expected):
    record = run_tiny(tmp_path, strategy, epochs=1)
    assert record["status"] == "ok", record.get("error")
    assert record["trainable_params_per_phase"] == expected
    assert record["freeze_verified"] is True and record["freeze_violations"] == []
    trains = {
        "bitfit": lambda n: n.endswith(".bias"),
        "norm_only": lambda n: n.endswith((".1.weight", ".1.bias")),  # BN is block item 1
        "discriminative_lr": lambda n: True,
        "lora": is_lora_param,
        "lora:2": is_lora_param,
    }[strategy]
    assert changed(watched) == names(watched, trains)


def test_lora_leaves_batchnorm_statistics_alone(tiny_plugin, tmp_path, watched):
    record = run_tiny(tmp_path, "lora", epochs=1)
    assert record["freeze_verified"] is True
    assert len(watched["bn_training"]) == 3 and not any(watched["bn_training"])  # eval


def test_discriminative_lr_decays_per_stage(tiny_plugin, tmp_path, watched):
    run_tiny(tmp_path, "discriminative_lr:0.5", epochs=1, lr=0.01)
    # head, then stages 0, 1, 2: the last stage at x0.5, the stem at x0.5**3
    assert watched["lrs"] == [[pytest.approx(v) for v in (0.01, 0.00125, 0.0025, 0.005)]]


def test_gradual_unfreeze_one_stage_per_epoch_and_cache(tiny_plugin, tmp_path, watched):
    record = run_tiny(tmp_path, "gradual_unfreeze", epochs=3)
    assert record["trainable_params_per_phase"] == {
        "head": HEAD,
        "last1": HEAD + stage_params(2),
        "last2": HEAD + stage_params(1, 2),
    }
    assert record["trainable_params"] == HEAD + stage_params(1, 2)
    assert record["freeze_verified"] is True
    assert changed(watched) == names(watched, lambda n: n.startswith(("stages.1.", "stages.2.")))
    # each phase's prefix (3, then 2, then 1 stages) was never trained: all cached
    assert [p.split(":")[0] for p in record["feature_cache"].split(",")] == ["device"] * 3


def test_gradual_unfreeze_plan_follows_the_budget():
    def shape(phases):
        return [(p.name, p.epoch_fraction, list(p.train_stages)) for p in phases]

    assert shape(gradual_unfreeze(3, "1", epochs=6)) == [
        ("head", 1.0, []),
        ("last1", 1.0, [2]),
        ("last2", 1.0, [1, 2]),
        ("last3", 3.0, [0, 1, 2]),  # everything trains for the rest of the budget
    ]
    assert shape(gradual_unfreeze(3, "2", epochs=3)) == [
        ("head", 1.0, []),
        ("last2", 1.0, [1, 2]),
        ("last3", 1.0, [0, 1, 2]),
    ]
    assert shape(gradual_unfreeze(9, "1", epochs=1)) == [("head", 1.0, [])]
    with pytest.raises(TlbenchError, match="gradual_unfreeze:0"):
        gradual_unfreeze(3, "0", epochs=3)


def test_plans_without_epochs_keyword_still_work():
    spec = next(s for s in STRATEGIES if s.name == "partial")
    assert [p.name for p in spec.phases(5, "2", epochs=3)] == ["last2"]
    gradual = next(s for s in STRATEGIES if s.name == "gradual_unfreeze")
    assert len(gradual.phases(3, "1", epochs=2)) == 2


def test_bad_arguments_are_rejected():
    by_name = {s.name: s for s in STRATEGIES}
    for name, arg in (("discriminative_lr", "0"), ("discriminative_lr", "x"), ("lora", "0")):
        with pytest.raises(TlbenchError, match=name):
            by_name[name].phases(3, arg, epochs=1)


def test_scratch_is_the_reference_row_with_random_weights(tiny_plugin):
    registry = load_registry()
    settings = make_settings(False, 0.01, 2, epochs=1, resolution=16)
    choices = Choices(
        ["tiny"], ["full", "scratch"], ["synth"], [0], "imagenet", {"synth": 95}, True
    )
    rows = [(c.strategy, c.weights) for c in expand(choices, settings, registry)]
    assert REFERENCE == ("scratch", "random")
    assert rows == [("full", "imagenet"), ("scratch", "random")]  # listed once, random


def test_scratch_trains_everything_from_random(tiny_plugin, tmp_path):
    record = run_tiny(tmp_path, "scratch", epochs=1, weights="random")
    assert record["trainable_params"] == TOTAL and record["weights_source"] == "random"
    refused = run_tiny(tmp_path / "x", "scratch", epochs=1, weights="imagenet")
    assert refused["status"] == "failed" and "random" in refused["error"]


# ---- LoRA itself ----------------------------------------------------------------------


def tiny_model() -> StagedModel:
    from helpers.plugins import tiny_staged

    from tlbench.backbones.weights import WeightsChoice

    torch.manual_seed(0)
    model = tiny_staged(WeightsChoice("random"))
    model.set_head(10)
    return model.eval()


def test_lora_starts_as_the_identity_and_learns_a_low_rank_delta():
    model = tiny_model()
    x = torch.randn(4, 3, 16, 16)
    before = model(x)
    assert add_lora(model, rank=2) == 3
    assert torch.equal(model(x), before)  # B = 0: exactly the same function
    conv = model.stages[2][0][0]
    original = conv.parametrizations.weight.original.detach().clone()
    delta = conv.parametrizations.weight[0]
    with torch.no_grad():
        delta.lora_B.normal_()
    assert not torch.equal(model(x), before)
    flat = (conv.weight - original).reshape(16, -1)
    assert torch.linalg.matrix_rank(flat.detach()) == 2
    assert lora_param_count(model) == 2 * (27 + 8) + 2 * (72 + 16) + 2 * (144 + 16)


def test_lora_adapts_timm_conv_layers_of_a_real_backbone():
    """efficientnet_lite0 uses timm's Conv2dSame (TF padding) and depthwise convs."""
    from tlbench.backbones.weights import WeightsChoice
    from tlbench.builtin.backbones import BACKBONES

    spec = next(b for b in BACKBONES if b.name == "efficientnet_lite0").spec()
    torch.manual_seed(0)
    model = spec.build(WeightsChoice("random")).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model.forward_stages(x)
    layers = add_lora(model, rank=4)
    kinds = {type(m).__name__ for m in model.stages.modules() if hasattr(m, "parametrizations")}
    assert layers == 49  # every conv: 5 of them Conv2dSame, 16 depthwise (fan-in 9 or 25)
    assert "Conv2dSame" in {k.split("Parametrized")[-1] for k in kinds}
    assert torch.equal(model.forward_stages(x), before)
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora_param(name))
    for m in model.stages.modules():  # move every B off zero so every A gets a gradient
        if hasattr(m, "lora_B"):
            nn.init.normal_(m.lora_B, std=1e-3)
    model.forward_stages(x).square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_list_strategies_shows_all_ten(monkeypatch):
    from typer.testing import CliRunner

    import tlbench.cli.app

    monkeypatch.setattr(tlbench.cli.ui.console, "width", 300)
    result = CliRunner().invoke(tlbench.cli.app.make_app(), ["list", "strategies"])
    assert result.exit_code == 0
    for spec in STRATEGIES:
        assert spec.name in result.output and spec.description in result.output


@pytest.mark.parametrize(
    ("text", "name", "arg"),
    [
        ("full", "full", None),
        ("partial:2", "partial", "2"),
        ("lora:8,bn=frozen", "lora", "8,bn=frozen"),
    ],
)
def test_a_strategy_text_parses_once_and_reads_back_the_same(text, name, arg):
    from tlbench.api.specs import StrategyRef

    ref = StrategyRef.parse(text)
    assert (ref.name, ref.arg, str(ref)) == (name, arg, text)
    assert StrategyRef.parse("partial:") == StrategyRef("partial")  # an empty arg is none


def test_a_strategy_ref_splits_its_options_and_refuses_unknown_ones():
    from tlbench.api.specs import StrategyRef

    assert StrategyRef.parse("partial:3,bn=frozen").split() == ("3", {"bn": "frozen"})
    assert StrategyRef.parse("full").split() == (None, {})
    with pytest.raises(TlbenchError, match="unknown option 'bn=maybe'"):
        StrategyRef.parse("partial:bn=maybe").split()
