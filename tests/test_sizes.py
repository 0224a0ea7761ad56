"""Datasets' own default split sizes, and every size problem in one message."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.cli import read_records, run_main, skip_pictures
from test_contract import dataset

import tlbench.plugins.registry as registry
from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import DatasetSpec
from tlbench.plan.sizes import with_dataset_defaults

RUN = ["run", "--backbones", "tiny", "--strategies", "linear_probe", "--resolution", "16"]
RUN += ["--epochs", "1", "--lr", "0.01", "--no-reference", "--run-name", "t"]
RUN += ["--device", "cpu", "--seeds", "1"]


def spec(**sizes) -> DatasetSpec:
    return DatasetSpec("d", 4, print, print, default_sizes=sizes or None)


def test_cpu_takes_the_smaller_cuda_the_datasets_own_and_given_sizes_win():
    small = spec(train=400, val=100, test=5000)
    assert with_dataset_defaults([small], False) == {
        "train_size": 400,
        "val_size": 100,
        "test_size": 1000,  # the CPU profile's is smaller
    }
    assert with_dataset_defaults([small], True) == {
        "train_size": 400,
        "val_size": 100,
        "test_size": 5000,  # CUDA's default is "all"
    }
    assert with_dataset_defaults([small], False, train_size=50)["train_size"] == 50
    assert with_dataset_defaults([spec()], False) == {
        "train_size": 2000,
        "val_size": 500,
        "test_size": 1000,
    }
    per_profile = spec(cpu={"train": 300}, cuda={"train": 3000})
    assert with_dataset_defaults([per_profile], False)["train_size"] == 300
    assert with_dataset_defaults([per_profile], True)["train_size"] == 3000
    two = [small, spec(train=350, val=120)]  # one run, one configuration: the smallest
    assert with_dataset_defaults(two, False)["train_size"] == 350


class SmallDatasets:
    @hookimpl
    def register_datasets(self, register):
        sized = dataset("small600")  # 600 train, 200 test images
        register(dataclasses.replace(sized, default_sizes={"train": 400, "val": 100, "test": 200}))
        register(dataset("plain600"))


@pytest.fixture
def small(tiny_plugin, monkeypatch):
    skip_pictures(monkeypatch)
    previous = registry.get_plugin_manager

    def with_small(load_entry_points: bool = True):
        pm = previous(load_entry_points)
        pm.register(SmallDatasets(), name="acme:small")
        return pm

    monkeypatch.setattr(registry, "get_plugin_manager", with_small)


def out(tmp_path) -> list[str]:
    return ["--output", str(tmp_path / "results"), "--benchmarks", str(tmp_path / "B.md")]


def test_a_dataset_with_its_own_defaults_runs_with_the_cpu_profile(small, tmp_path):
    result = run_main(RUN + ["--datasets", "small600"] + out(tmp_path))
    assert result.code == 0, result.err
    (record,) = read_records(tmp_path)
    assert record["split_sizes"] == {"train": 400, "val": 100, "test": 200}


def test_every_size_problem_is_in_one_message(small, tmp_path):
    result = run_main(RUN + ["--datasets", "plain600"] + out(tmp_path))
    assert result.code == 2
    assert result.err_lines() == [
        "error: 2 split sizes this data cannot provide (set them with --train-size, "
        "--val-size, --test-size):",
        "  train size 2000 is larger than the 100 plain600 train images left after holding "
        "out 500 (max 100)",
        "  test size 1000 is larger than the 200 plain600 test images (max 200)",
    ]
    too_much = ["--val-size", "600", "--test-size", "2"]
    result = run_main(RUN + ["--datasets", "plain600"] + too_much + out(tmp_path))
    assert [line.strip() for line in result.err_lines()[1:]] == [
        "validation size 600 leaves no training images out of 600 plain600 train images (max 599)",
        "test size 2 cannot cover the 4 plain600 classes",
    ]
    one = run_main(RUN + ["--datasets", "plain600", "--train-size", "50"] + out(tmp_path))
    assert one.err_lines() == [
        "error: test size 1000 is larger than the 200 plain600 test images (max 200); set "
        "sizes with --train-size, --val-size, --test-size."
    ]
    assert not (tmp_path / "results").exists()
