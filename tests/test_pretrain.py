"""``--weights pretrain:<dataset>``: train on the source once, cache it, transfer from it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers.tiny_run import run_tiny

import tlbench.run.pretrain as pretrain
from tlbench.api.errors import UnknownNameError
from tlbench.backbones.weights import WeightsChoice
from tlbench.plan.cells import Choices, expand
from tlbench.plan.settings import Cell, make_settings
from tlbench.plugins.registry import load_registry


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def test_checkpoint_is_trained_once_then_reused(tiny_plugin, tmp_path, model_cache, monkeypatch):
    first = run_tiny(tmp_path / "a", "linear_probe", epochs=1, weights="pretrain:synth")
    assert first["status"] == "ok", first.get("error")
    assert first["pretrain_cache_hit"] is False and first["pretrain_source"] == "synth"
    files = sorted(p.name for p in model_cache.iterdir())
    assert len(files) == 2 and files[0].startswith("tiny-synth-16px-")  # .json + .pt
    info = json.loads((model_cache / files[0]).read_text())
    assert first["pretrain_source_accuracy"] == info["source_accuracy"]
    assert info["key"]["settings"]["epochs"] == 1 and info["source"] == "synth"

    def no_training(*args, **kwargs):
        raise AssertionError("the cached source checkpoint must be reused")

    monkeypatch.setattr(pretrain, "train_source", no_training)
    again = run_tiny(tmp_path / "b", "full", epochs=1, weights="pretrain:synth")  # new runner
    assert again["status"] == "ok", again.get("error")
    assert again["pretrain_cache_hit"] is True
    assert again["pretrain_checkpoint"] == first["pretrain_checkpoint"]
    assert again["pretrain_source_accuracy"] == first["pretrain_source_accuracy"]
    assert "pretrained here on synth" in again["weights_source"]
    # linear_probe kept the backbone frozen: it really started from the checkpoint
    assert first["freeze_verified"] is True


def test_loaded_backbone_equals_checkpoint(tiny_plugin, tmp_path, model_cache):
    from tlbench.run.runner import Runner
    from tlbench.train.device import resolve_device

    registry = load_registry()
    settings = make_settings(False, 0.01, 2, epochs=1, batch_size=32, resolution=16,
                             train_size=200, val_size=100, test_size=100)  # fmt: skip
    cell = Cell("tiny", "linear_probe", "synth", 3, "pretrain:synth", 16, 95.0, settings)
    runner = Runner(registry, None, resolve_device("cpu"), tmp_path)
    model, _ = pretrain.pretrained_backbone(runner.workspace, cell)
    saved = torch.load(pretrain.checkpoint_path(cell), weights_only=True)
    assert saved.keys() == model.stages.state_dict().keys()
    assert all(torch.equal(v, model.stages.state_dict()[k]) for k, v in saved.items())
    random = registry.get("backbones", "tiny").build(WeightsChoice("random"))
    assert not torch.equal(random.stages[0][0].weight, model.stages[0][0].weight)


def test_cache_key_covers_backbone_source_resolution_and_settings(model_cache):
    settings = make_settings(False, 0.01, 2, epochs=1, resolution=16)
    cell = Cell("tiny", "full", "mnist", 0, "pretrain:fashion", 16, 95.0, settings)
    path = pretrain.checkpoint_path(cell)
    assert path.parent == model_cache and path.name.startswith("tiny-fashion-16px-")
    same = [
        dataclasses.replace(cell, seed=4, strategy="lora:8", dataset="synth", threshold=90.0),
    ]
    differ = [
        dataclasses.replace(cell, resolution=32),
        dataclasses.replace(cell, weights="pretrain:mnist"),
        dataclasses.replace(cell, backbone="resnet18"),
        dataclasses.replace(cell, settings=dataclasses.replace(settings, epochs=2)),
        dataclasses.replace(cell, settings=dataclasses.replace(settings, lr=0.1)),
    ]
    assert all(pretrain.checkpoint_path(c) == path for c in same)
    assert len({pretrain.checkpoint_path(c) for c in differ} | {path}) == len(differ) + 1


def test_unknown_source_dataset_suggests_a_name(tiny_plugin):
    settings = make_settings(False, 0.01, 2, epochs=1, resolution=16)
    choices = Choices(["tiny"], ["full"], ["synth"], [0], "pretrain:fashon", {"synth": 95}, False)
    with pytest.raises(UnknownNameError, match="fashion"):
        expand(choices, settings, load_registry())
