"""tlbench.api.env: one reading of every variable, the same words everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlbench.api import env
from tlbench.api.errors import DataUnavailable, TlbenchError
from tlbench.backbones import sources as backbone_sources
from tlbench.data import folder, torchvision_sets
from tlbench.data.sources import TorchvisionSource
from tlbench.run import pretrain

CACHE_VARS = ("TLBENCH_CACHE", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")


@pytest.fixture()
def clean(monkeypatch, tmp_path):
    for name in CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " yes ", "on"])
def test_offline_words_mean_offline_for_weights_and_data(clean, tmp_path, value):
    clean.setenv("TLBENCH_CACHE", str(tmp_path))
    clean.setenv("TLBENCH_OFFLINE", value)
    assert env.offline() and backbone_sources.offline()
    reason = TorchvisionSource("mnist", 10, "MNIST").available(None)
    assert reason is not None and "forbids downloading" in reason
    with pytest.raises(DataUnavailable, match="forbids torchvision's download"):
        torchvision_sets.probe(torchvision_sets.SETS["cifar10"], None)


@pytest.mark.parametrize("value", ["0", "false", "No", "off", ""])
def test_online_words_allow_downloads(clean, tmp_path, value):
    clean.setenv("TLBENCH_CACHE", str(tmp_path))
    clean.setenv("TLBENCH_OFFLINE", value)
    assert not env.offline() and not backbone_sources.offline()
    assert TorchvisionSource("mnist", 10, "MNIST").available(None) is None
    probe = torchvision_sets.probe(torchvision_sets.SETS["cifar10"], None)
    assert probe.endswith("(download needed)")


def test_an_unknown_word_is_an_error_not_a_guess(clean):
    clean.setenv("TLBENCH_OFFLINE", "ture")
    with pytest.raises(TlbenchError, match="TLBENCH_OFFLINE='ture' is not a yes/no value"):
        env.offline()
    clean.setenv("TLBENCH_CACHE_BUDGET_MB", "lots")
    with pytest.raises(TlbenchError, match="not a whole number"):
        env.cache_budget_bytes()


def _cache_paths() -> list[Path]:
    return [
        TorchvisionSource("mnist", 10, "MNIST").root(),
        torchvision_sets.cache_root("cifar10"),
        folder.cache_dir(),
        pretrain.cache_dir(),
    ]


def test_every_cache_follows_xdg_cache_home(clean, tmp_path):
    default = tmp_path.resolve() / "home" / ".cache" / "tlbench"
    assert all(p.is_relative_to(default) for p in _cache_paths())
    clean.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = tmp_path.resolve() / "xdg" / "tlbench"
    assert _cache_paths() == [
        base / "torchvision",
        base / "torchvision" / "cifar10",
        base / "folders",
        base / "models",
    ]
    assert env.hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"


def test_tlbench_cache_wins_over_xdg(clean, tmp_path):
    clean.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    clean.setenv("TLBENCH_CACHE", str(tmp_path / "mine"))
    assert all(p.is_relative_to(tmp_path.resolve() / "mine") for p in _cache_paths())


@pytest.mark.parametrize(("value", "expected"), [("", None), ("yes", True), ("off", False)])
def test_channels_last_takes_the_same_words(monkeypatch, value, expected):
    monkeypatch.setenv("TLBENCH_CHANNELS_LAST", value)
    assert env.channels_last() is expected
