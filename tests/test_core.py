"""Unit tests of the pieces every cell relies on: metrics, records, registry, freeze check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tlbench.api.errors import DuplicateNameError, TlbenchError, UnknownNameError
from tlbench.api.specs import StrategySpec
from tlbench.data.preprocess import BatchAdapter
from tlbench.plan.settings import parse_seeds, parse_thresholds
from tlbench.plugins.registry import Registry, load_registry
from tlbench.report import leaderboard
from tlbench.store.records import append_record, finished_hashes, load_records
from tlbench.train.metrics import confusion_matrix, epochs_to_threshold, per_class_scores

REPO = Path(__file__).resolve().parents[1]


def test_benchmarks_md_is_up_to_date_with_results():
    """BENCHMARKS.md is generated: it must equal what `tlbench leaderboard` writes."""
    assert not leaderboard.is_stale(REPO / "results", REPO / "BENCHMARKS.md"), (
        "BENCHMARKS.md is stale: run `tlbench leaderboard` and commit it"
    )


def test_epochs_to_threshold_first_crossing_and_censoring():
    curve = [(0.25, 80.0), (0.5, 95.0), (0.75, 94.0), (1.0, 97.0)]
    assert epochs_to_threshold(curve, 95.0) == 0.5
    assert epochs_to_threshold(curve, 99.0) is None


def test_per_class_scores_hand_computed():
    labels = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0])
    cm = confusion_matrix(preds, labels, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    scores = per_class_scores(cm)
    assert scores["precision"] == [0.5, pytest.approx(2 / 3, abs=1e-6), 0.0]
    assert scores["recall"] == [0.5, 1.0, 0.0]
    assert scores["f1"][1] == pytest.approx(0.8, abs=1e-6)
    assert scores["support"] == [2, 2, 1]


def minimal_record(config_hash: str) -> dict:
    """The least an ``ok`` record must hold to validate (tlbench/store/schema.py)."""
    identity = {"backbone": "b", "strategy": "s", "dataset": "d", "seed": 0, "weights": "random"}
    return {
        **identity,
        "config_hash": config_hash,
        "status": "ok",
        "device": "cpu",
        "resolution": 16,
        "config": {"epochs": 1, "batch_size": 1, "lr": 0.01, "evals_per_epoch": 1},
        **{"final_accuracy": 50.0, "epoch_budget": 1, "epochs_to_threshold": None},
        "trainable_params": 1,
    }


def test_records_survive_a_torn_line(tmp_path):
    append_record(tmp_path, minimal_record("a"))
    with open(tmp_path / "records.jsonl", "ab") as handle:
        handle.write(b'{"config_hash": "b", "sta')  # a crash mid-write
    append_record(tmp_path, minimal_record("c"))
    with pytest.warns(UserWarning, match=r"records.jsonl:2"):
        loaded = load_records(tmp_path)
    assert [r["config_hash"] for r in loaded] == ["a", "c"]
    assert finished_hashes(loaded) == {"a", "c"}
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["config_hash"] == "c"


def test_registry_duplicate_names_both_plugins():
    registry = Registry()
    spec = StrategySpec("x", "d", lambda n, a: [])
    registry.add("strategies", spec, "plugin-a")
    registry.add("strategies", spec, "plugin-b")  # kept; an error when the name is used
    with pytest.raises(DuplicateNameError, match="plugin-a.*plugin-b"):
        registry.get("strategies", "x")
    with pytest.raises(DuplicateNameError, match="plugin-a.*plugin-b"):
        registry.resolve_list("strategies", "all")


def test_builtins_come_from_entry_points():
    registry = load_registry()
    assert registry.items["strategies"]["full"].plugin == "tlbench:strategies"
    assert len(registry.names("backbones")) >= 7
    with pytest.raises(UnknownNameError, match="Did you mean 'linear_probe'"):
        registry.resolve_list("strategies", "linear_prob")
    with pytest.raises(TlbenchError, match="malformed"):
        registry.resolve_list("backbones", "resnet18,,vgg16")


def test_seed_and_threshold_parsing():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,5,7") == [0, 5, 7]
    assert parse_thresholds("97,fashion=90", ["mnist", "fashion"]) == {
        "mnist": 97.0,
        "fashion": 90.0,
    }
    with pytest.raises(TlbenchError, match="percentage"):
        parse_thresholds("101", ["mnist"])


def test_adapter_grayscale_to_normalized_rgb():
    images = torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8)
    adapter = BatchAdapter(4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))
    out = adapter(images)
    assert out.shape == (1, 3, 4, 4)
    assert torch.equal(out[0, 0], out[0, 2])
    assert out.min() == pytest.approx(-2.0) and out.max() == pytest.approx(2.0)
