"""One row = one configuration: what config_hash covers, and one run directory per config.

config_hash must change with the data actually loaded, the weights file's content and
the plugins' versions (not only with the names and settings); a run directory refuses
records of other settings; seeds draw their own training subset (validation and test
stay fixed); each dataset has its own default threshold.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers.cli import TINY_RUN, output_args, records_path, run_main, skip_pictures, snapshot
from helpers.plugins import TinyPlugin, tiny_staged, write_synthetic_idx

import tlbench
import tlbench.plugins.registry as plugin_registry
from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import DatasetSpec
from tlbench.backbones.weights import WeightsChoice
from tlbench.data.idx import read_idx, write_idx
from tlbench.plan.settings import Cell, make_settings, parse_thresholds
from tlbench.run.runner import Runner
from tlbench.store.records import REQUIRED_CONFIG_KEYS, SCHEMA_VERSION, row_hash
from tlbench.train.device import resolve_device


def settings(lr: float = 0.01, train_size=200):
    """``train_size=None``: the whole train split minus validation (the CUDA profile's)."""
    made = make_settings(
        False, lr, 2, epochs=1, batch_size=32, resolution=16, train_size=train_size or 200,
        val_size=100, test_size=100,
    )  # fmt: skip
    return made if train_size else dataclasses.replace(made, train_size=None)


def finalized(weights: str = "imagenet", seed: int = 0, strategy: str = "full", **kw) -> Cell:
    """The tiny cell as ``tlbench run`` hashes it: provenance attached by the runner
    (a new runner each time: the data is loaded again, as by a new command)."""
    pm = plugin_registry.get_plugin_manager()  # with the tiny plugin (fixture)
    registry = plugin_registry.collect(pm)
    runner = Runner(registry, pm.hook, resolve_device("cpu"), None)
    cell = Cell("tiny", strategy, "synth", seed, weights, 16, 95.0, settings(**kw))
    (done,) = runner.finalize([cell])
    return done


def test_config_hash_covers_schema_data_weights_and_plugins(tiny_plugin):
    cell = finalized()
    config = cell.config()
    assert all(key in config for key in REQUIRED_CONFIG_KEYS)
    assert config["schema"] == SCHEMA_VERSION and config["data"].startswith("sha256:")
    assert config["plugins"] == {
        "backbone": "helpers unversioned",  # no __version__, no distribution
        "strategy": f"tlbench {tlbench.__version__}",  # the built-ins' entry points
        "dataset": "helpers unversioned",
    }
    assert cell.row_hash == row_hash(config) != cell.config_hash
    other_seed = finalized(seed=1)
    assert other_seed.config_hash != cell.config_hash and other_seed.row_hash == cell.row_hash


def test_augmentation_is_in_the_config_only_when_on():
    """--augment none keeps the hashes cells had before augmentation existed; shift:2 is
    its own configuration (what tlbench run --augment records)."""
    plain = Cell("tiny", "full", "synth", 0, "imagenet", 16, 95.0, settings())
    shifted = dataclasses.replace(
        plain, settings=dataclasses.replace(plain.settings, augment="shift:2")
    )
    assert "augment" not in plain.config() and shifted.config()["augment"] == "shift:2"
    assert shifted.config_hash != plain.config_hash


def test_config_hash_changes_when_the_data_folder_changes(tiny_plugin, synth_dir):
    before = finalized().config_hash
    assert finalized().config_hash == before  # stable: resume keeps working
    images_path = synth_dir / "t10k-images-idx3-ubyte.gz"
    images = read_idx(images_path).numpy().copy()
    images[0, 0, 0] ^= 1  # one pixel of one test image
    write_idx(images_path, images)
    assert finalized().config_hash != before


def test_config_hash_changes_when_the_weights_file_changes(tiny_plugin, tmp_path):
    path = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(tiny_staged(WeightsChoice("random")).stages.state_dict(), path)
    label = WeightsChoice.parse(str(path)).label()
    first = finalized(weights=label)
    assert first.config()["weights_id"].startswith("file sha256:")
    torch.manual_seed(1)
    torch.save(tiny_staged(WeightsChoice("random")).stages.state_dict(), path)  # same name
    assert finalized(weights=label).config_hash != first.config_hash


def test_config_hash_changes_when_a_plugin_version_changes(tiny_plugin):
    tiny_plugin.__version__ = "1.0"
    first = finalized()
    assert first.config()["plugins"]["backbone"] == "helpers 1.0"
    tiny_plugin.__version__ = "1.1"
    assert finalized().config_hash != first.config_hash


def test_entry_point_plugins_are_versioned_by_their_distribution(monkeypatch, synth_dir):
    class Dist:
        name, version = "tlbench-tiny", "2.3"

    class EntryPoint:
        name, dist = "tiny", Dist()

        def load(self):
            return TinyPlugin(synth_dir)

    monkeypatch.setattr(plugin_registry.metadata, "entry_points", lambda group: [EntryPoint()])
    monkeypatch.delenv("TLBENCH_LOAD_PLUGINS", raising=False)  # conftest: off by default
    registry = plugin_registry.collect(plugin_registry.get_plugin_manager())
    assert registry.plugin_of("backbones", "tiny") == "tlbench-tiny:tiny"
    assert registry.version_of("backbones", "tiny") == "tlbench-tiny 2.3"


def test_records_carry_row_hash_and_provenance(tiny_plugin, tmp_path, monkeypatch):
    skip_pictures(monkeypatch)
    result = run_main(TINY_RUN + ["--strategies", "linear_probe"] + output_args(tmp_path))
    assert result.code == 0, result.err
    (record,) = [json.loads(line) for line in records_path(tmp_path).read_text().splitlines()]
    assert record["row_hash"] == row_hash(record["config"])
    assert record["config"]["data"].startswith("sha256:")
    if "git" in record:  # run from a checkout
        assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    again = run_main(TINY_RUN + ["--strategies", "linear_probe"] + output_args(tmp_path))
    assert again.code == 0 and "0 cells ran, 1 already" in again.out  # resume still works
    dry = run_main(TINY_RUN + ["--strategies", "linear_probe", "--dry-run"] + output_args(tmp_path))
    assert dry.code == 0 and "done" in dry.out


def test_mixing_settings_in_one_run_directory_is_refused(tiny_plugin, tmp_path, monkeypatch):
    skip_pictures(monkeypatch)
    args = TINY_RUN + ["--strategies", "linear_probe"] + output_args(tmp_path)
    assert run_main(args).code == 0
    before = snapshot(tmp_path / "results")
    mixed = run_main([("0.02" if a == "0.01" else a) for a in args])  # only --lr differs
    assert mixed.code == 2
    (line,) = mixed.err_lines()
    assert "lr: 0.01 recorded, 0.02 now" in line and "--run-name" in line
    assert snapshot(tmp_path / "results") == before  # nothing recorded is lost or added
    dry = run_main([("0.02" if a == "0.01" else a) for a in args] + ["--dry-run"])
    assert dry.code == 0 and "this run would stop" in dry.out
    elsewhere = [("t2" if a == "t" else a) for a in args]
    assert run_main([("0.02" if a == "0.01" else a) for a in elsewhere]).code == 0


def test_lr_auto_rows_with_their_own_grids_share_a_run_directory(tiny_plugin, tmp_path):
    """Under --lr auto each strategy's grid is in its config: a per-cell key, so resuming
    a run of several strategies is accepted, while a changed grid for a recorded row is
    refused (exit 2) like any other changed setting."""
    from tlbench.api.errors import TlbenchError
    from tlbench.run.provenance import check_same_settings

    full, probe = (finalized(strategy=s, lr=None) for s in ("full", "linear_probe"))
    assert full.config()["lr_search"]["grid"] != probe.config()["lr_search"]["grid"]
    records = [{"config": full.config()}, {"config": probe.config()}]
    check_same_settings(tmp_path, records, [full, probe])  # a resume: accepted
    changed = dict(full.config(), lr_search={"grid": [0.5], "halving": "off"})
    try:
        check_same_settings(tmp_path, [{"config": changed}], [full])
    except TlbenchError as exc:
        assert "lr_search" in str(exc)
    else:
        raise AssertionError("a changed LR grid for a recorded row was accepted")


def test_seeds_vary_the_training_subset_but_not_validation_or_test(tiny_plugin):
    pm = plugin_registry.get_plugin_manager()
    runner = Runner(plugin_registry.collect(pm), pm.hook, resolve_device("cpu"), None)

    def splits(seed: int, train_size=200):
        return runner.workspace.splits_for(Cell("tiny", "full", "synth", seed, "imagenet", 16, 95.0,
                                      settings(train_size=train_size)))[0]  # fmt: skip

    a, b, again = splits(0), splits(1), splits(0)
    assert not torch.equal(a.train_images, b.train_images)
    assert torch.equal(a.train_images, again.train_images)  # a seed always draws the same
    assert torch.bincount(a.train_labels).tolist() == torch.bincount(b.train_labels).tolist()
    for name in ("val_images", "val_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(splits(0, None).train_images, splits(1, None).train_images)

    strategy = runner.registry.get("strategies", "linear_probe")
    keys = [
        runner.workspace.cache_key(
            Cell(
                "tiny",
                "linear_probe",
                "synth",
                seed,
                "imagenet",
                16,
                95.0,
                settings(train_size=size),
            ),
            strategy,
        )  # fmt: skip
        for seed, size in ((0, 200), (1, 200), (0, None), (1, None))
    ]
    assert keys[0] != keys[1] and keys[2] == keys[3]  # cached features follow the subset


def test_per_dataset_default_thresholds():
    defaults = {"mnist": 95.0, "fashion": 90.0}
    both = ["mnist", "fashion"]
    assert parse_thresholds(None, both, defaults) == defaults
    assert parse_thresholds("97", both, defaults) == {"mnist": 97.0, "fashion": 97.0}
    assert parse_thresholds("fashion=85", both, defaults) == {"mnist": 95.0, "fashion": 85.0}
    assert parse_thresholds("", ["other"], defaults) == {"other": 95.0}
    registry = plugin_registry.load_registry()
    assert registry.get("datasets", "mnist").default_threshold == 95.0
    assert registry.get("datasets", "fashion").default_threshold == 90.0


class Synth80:
    """``synth`` again under another name, declaring its own 80% threshold."""

    def __init__(self, root):
        self.inner = TinyPlugin(root)

    @hookimpl
    def register_datasets(self, register):
        found = []
        self.inner.register_datasets(found.append)
        spec = found[0]
        register(DatasetSpec("synth80", 10, spec.load, spec.probe, default_threshold=80.0))


def test_the_run_uses_each_datasets_threshold_unless_overridden(
    tiny_plugin, synth_dir, tmp_path, monkeypatch
):
    skip_pictures(monkeypatch)
    original = plugin_registry.get_plugin_manager

    def with_synth80(load_entry_points: bool = True):
        pm = original(load_entry_points)
        pm.register(Synth80(synth_dir), name="tests:synth80")
        return pm

    monkeypatch.setattr(plugin_registry, "get_plugin_manager", with_synth80)
    args = TINY_RUN + ["--strategies", "linear_probe", "--datasets", "synth,synth80"]
    result = run_main(args + output_args(tmp_path))
    assert result.code == 0, result.err
    lines = records_path(tmp_path).read_text().splitlines()
    assert {r["dataset"]: r["threshold"] for r in map(json.loads, lines)} == {
        "synth": 95.0,
        "synth80": 80.0,
    }
    board = (tmp_path / "B.md").read_text()
    assert "epochs to 95% ↓" in board and "epochs to 80% ↓" in board
    over = run_main(args + ["--threshold", "synth80=70", "--run-name", "o"] + output_args(tmp_path))
    assert over.code == 0, over.err
    lines = (tmp_path / "results" / "o" / "records.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["threshold"] for line in lines) == [70.0, 95.0]


def test_data_fingerprint_is_of_the_loaded_tensors(tmp_path):
    from tlbench.data.sources import find_idx_files, load_idx_dir

    one = write_synthetic_idx(tmp_path / "a")
    two = write_synthetic_idx(tmp_path / "b")  # same content, another folder
    three = write_synthetic_idx(tmp_path / "c", seed=1)

    def fingerprint(root):
        return load_idx_dir(find_idx_files(root), "synth", 10, f"dir:{root}").fingerprint()

    assert fingerprint(one) == fingerprint(two) != fingerprint(three)


def test_a_run_from_a_git_checkout_records_its_commit():
    """git_state checks that tlbench is the checkout's own package: the package root,
    wherever provenance.py sits (it returned None for every record after the move into
    tlbench/run/, until this test)."""
    from tlbench.run.provenance import git_state

    repo = Path(tlbench.__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        pytest.skip("tlbench is not running from a git checkout")
    state = git_state()
    assert state is not None and len(state["commit"]) == 40 and isinstance(state["dirty"], bool)
