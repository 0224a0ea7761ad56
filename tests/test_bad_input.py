"""Bad input through the real console entry point: one line, exit code 2, nothing touched.

Each case runs ``tlbench`` (``tlbench.cli.app.main``) against an output directory that
already holds a finished record and a leaderboard, and checks that stderr is exactly
one ``error:`` line saying what was wrong and what is accepted, and that no file under
the output directory (nor the leaderboard) changed.

Covered elsewhere, at the function level, and not repeated here: every IDX defect and
the hypothesis fuzz of the IDX parser (``test_data.py::test_idx_defects_*``,
``test_fuzz_*``), the weights-file messages (``test_backbones.py::test_file_*``).
This file proves those errors reach the user as one line and exit 2.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import TINY_RUN, run_main, skip_pictures, snapshot
from helpers.plugins import tiny_staged, write_synthetic_idx

from tlbench.backbones.weights import WeightsChoice
from tlbench.data import sources
from tlbench.data.idx import write_idx

FAILED_RECORD = {
    "config_hash": "0123456789abcdef",
    "status": "failed",
    "error": "RuntimeError: an earlier run's failure",
    **{"backbone": "tiny", "strategy": "full", "dataset": "synth", "seed": 0},
    **{"weights": "imagenet", "device": "cpu", "resolution": 16},
    "config": {"epochs": 2, "batch_size": 64, "lr": 0.01, "evals_per_epoch": 4},
}
"""A schema-valid record of another run directory: a bad-input run must leave it alone."""


class NotATensor:
    """A custom class: torch.load(weights_only=True) must refuse to unpickle it."""


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """An output directory with a finished record, plus a leaderboard: must stay as is."""
    output = tmp_path / "results"
    (output / "earlier").mkdir(parents=True)
    (output / "earlier" / "records.jsonl").write_text(json.dumps(FAILED_RECORD) + "\n")
    (tmp_path / "B.md").write_text("# leaderboard\n")
    return tmp_path


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
    """No real data directories or caches; a fresh in-process dataset cache."""
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TLBENCH_SYSTEM_DATA", str(tmp_path / "system"))
    monkeypatch.delenv("TLBENCH_DATA_DIR", raising=False)
    sources.clear_cache()
    yield
    sources.clear_cache()


def rejects(recorded: Path, args: list[str], *fragments: str) -> str:
    """Run ``tlbench ARGS``; assert exit 2, one error line with ``fragments``, no change."""
    before = snapshot(recorded)
    out = ["--output", str(recorded / "results"), "--benchmarks", str(recorded / "B.md")]
    result = run_main(args + out)
    assert result.code == 2, result.out + result.err
    lines = result.err_lines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(recorded) == before, "a bad-input run touched the output"
    assert "cells ran" not in result.out  # nothing trained
    return lines[0]


# ---------------------------------------------------------------- names and lists


@pytest.mark.parametrize(
    "flag, value, fragments",
    [
        ("--backbones", "tinny", ["unknown backbone 'tinny'", "Did you mean 'tiny'?", "resnet18"]),
        ("--strategies", "ful", ["unknown strategy 'ful'", "Did you mean 'full'?"]),
        ("--strategies", "partial:x", ["strategy partial:x is invalid", "e.g. partial:2"]),
        ("--strategies", "partial:\u00b2", ["strategy partial:\u00b2 is invalid"]),
        ("--datasets", "synt", ["unknown dataset 'synt'", "Did you mean 'synth'", "mnist"]),
        ("--backbones", "tiny,,resnet18", ["malformed backbone list 'tiny,,resnet18'", "'a,b'"]),
        ("--backbones", ",", ["malformed backbone list ','", "no empty items"]),
        ("--strategies", "", ["malformed strategy list ''", "or 'all'"]),
        ("--datasets", "synth,", ["malformed dataset list 'synth,'"]),
        ("--augment", "flip", ["--augment 'flip'"]),
    ],
)
def test_unknown_names_and_malformed_lists(tiny_plugin, recorded, flag, value, fragments):
    rejects(recorded, TINY_RUN + [flag, value], *fragments)


# ---------------------------------------------------------------- numbers out of range


@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--epochs", "0", "--epochs 0 is out of range: accepted 1..1000"),
        ("--epochs", "5000", "--epochs 5000 is out of range: accepted 1..1000"),
        ("--batch-size", "0", "--batch-size 0 is out of range: accepted 1..65536"),
        ("--resolution", "8", "--resolution 8 is out of range: accepted 16..1024"),
        ("--resolution", "99999", "--resolution 99999 is out of range: accepted 16..1024"),
        ("--train-size", "3", "--train-size 3 is out of range: accepted 10..10000000"),
        ("--evals-per-epoch", "0", "--evals-per-epoch 0 is out of range: accepted 1..100"),
        ("--lr", "0", "--lr '0' is invalid: give auto (chosen on validation per strategy)"),
        ("--threshold", "101", "--threshold '101' is invalid: give a percentage in (0, 100]"),
        ("--threshold", "0", "--threshold '0' is invalid"),
        ("--threshold", "ninety", "--threshold 'ninety' is invalid"),
        ("--threshold", "mnist=90", "names dataset 'mnist', which is not in this run (synth)"),
        ("--seeds", "0", "a seed count must be between 1 and 100"),
        ("--seeds", "-1,2", "non-negative integers"),
        ("--head-hidden", "-1", "--head-hidden -1 is out of range: accepted 0..65536"),
        ("--val-size", "0", "--val-size 0 is out of range: accepted 1..10000000"),
        ("--seeds", "1" + "0" * 22, "non-negative integers up to 4294967295"),
        ("--seeds", "0,1" + "0" * 22, "non-negative integers up to 4294967295"),
        ("--threshold", "synth=90,synth=50", "sets dataset 'synth' twice"),
        ("--threshold", "90,50", "gives two thresholds for every dataset"),
        ("--evals-per-epoch", "100", "--evals-per-epoch 100 is more than the 4 training steps"),
        ("--epochs", "three", "Invalid value for '--epochs'"),
        ("--epoch", "3", "No such option: --epoch"),
    ],
)
def test_numbers_out_of_range(tiny_plugin, recorded, flag, value, fragment):
    rejects(recorded, TINY_RUN + [flag, value], fragment)


@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--train-size", "1000", "train size 1000 is larger than the 300 synth train images"),
        ("--test-size", "500", "test size 500 is larger than the 100 synth test images"),
        ("--val-size", "400", "validation size 400 leaves no training images out of 400"),
    ],
)
def test_sizes_larger_than_the_data(tiny_plugin, recorded, flag, value, fragment):
    rejects(recorded, TINY_RUN + [flag, value], fragment, "(max ")


# ---------------------------------------------------------------- data files

IDX = "train-images-idx3-ubyte.gz"


def truncate(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-7]))


def wrong_magic(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x02" + raw[4:]))


def count_mismatch(path: Path) -> None:
    labels = path.parent / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(399, dtype=np.uint8))


def corrupt_gzip(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-30])


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (truncate, "truncated IDX file"),
        (wrong_magic, "wrong IDX magic number 0x00000802"),
        (count_mismatch, "holds 400 images but"),
        (corrupt_gzip, "corrupt gzip file"),
    ],
    ids=["truncated", "magic", "count", "gzip"],
)
def test_corrupt_files_in_the_named_data_dir_are_an_error(
    tiny_plugin, recorded, tmp_path, damage, fragment
):
    write_synthetic_idx(tmp_path / "system" / "fashion-mnist")  # a good fallback: not used
    user = write_synthetic_idx(tmp_path / "data" / "fashion")
    damage(user / IDX)
    line = rejects(
        recorded,
        TINY_RUN + ["--datasets", "fashion", "--data-dir", str(tmp_path / "data")],
        fragment,
        str(user / IDX),
    )
    assert "system" not in line


def test_missing_data_dir_is_an_error(tiny_plugin, recorded, tmp_path):
    args = TINY_RUN + ["--datasets", "fashion", "--data-dir", str(tmp_path / "typo")]
    rejects(recorded, args, "does not exist")


# ---------------------------------------------------------------- weights files

RESNET = ["--backbones", "resnet18", "--resolution", "32", "--strategies", "linear_probe"]


@pytest.mark.parametrize(
    "content, fragments",
    [
        ([torch.zeros(2)], ["holds a list, not a state dict", "torch.save(model.state_dict()"]),
        ({"w": 3}, ["not a state dict: entry 'w' is a int"]),
        (
            {"conv1.weight": torch.zeros(1), "payload": NotATensor()},
            [
                "refused by torch.load(weights_only=True)",
                "NotATensor",
                "never loads with weights_only=False",
            ],
        ),
        (
            "tiny",
            [
                "does not fit backbone resnet18",
                "missing: ",
                "stages.0.0.weight (8, 3, 3, 3) vs model (64, 3, 7, 7)",
            ],
        ),
    ],
    ids=["list", "not-tensors", "unsafe-pickle", "other-architecture"],
)
def test_bad_weights_file_is_caught_before_training(
    tiny_plugin, recorded, tmp_path, content, fragments
):
    path = tmp_path / "weights.pth"
    if content == "tiny":
        content = tiny_staged(WeightsChoice("random")).state_dict()
    torch.save(content, path)
    rejects(recorded, TINY_RUN + RESNET + ["--weights", str(path)], f"--weights {path}", *fragments)


def test_weights_file_that_does_not_exist(tiny_plugin, recorded, tmp_path):
    missing = tmp_path / "nope.pth"
    rejects(
        recorded,
        TINY_RUN + ["--weights", str(missing)],
        "is neither 'imagenet', 'random' nor an existing file path",
    )


def test_good_weights_file_runs(tiny_plugin, tmp_path, monkeypatch):
    """The counterpart: a matching state dict trains (and the record says where from)."""
    import timm

    skip_pictures(monkeypatch)
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    out = ["--output", str(tmp_path / "results"), "--benchmarks", str(tmp_path / "B.md")]
    args = TINY_RUN + RESNET + ["--epochs", "1", "--weights", str(path)] + out
    result = run_main(args)
    assert result.code == 0, result.out + result.err
    records = (tmp_path / "results" / "t" / "records.jsonl").read_text().splitlines()
    by_weights = {json.loads(line)["weights"]: json.loads(line) for line in records}
    assert by_weights[f"file:{path}"]["weights_source"] == f"file:{path}"
    assert by_weights[f"file:{path}"]["status"] == "ok"


# ---------------------------------------------------------------- oversized weights files


def sparse_file(path: Path) -> None:
    with open(path, "wb") as handle:
        handle.truncate(300 * 2**20)  # 300 MiB on paper, nothing on disk


def inflating_zip(path: Path) -> None:
    """A torch-style zip whose one entry inflates to 320 MiB of zeros (a few KiB on disk)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as entry:
            block = bytes(16 * 2**20)
            for _ in range(20):
                entry.write(block)


@pytest.mark.parametrize("make", [sparse_file, inflating_zip], ids=["large", "inflating"])
def test_oversized_weights_file_is_refused_before_loading(
    tiny_plugin, recorded, tmp_path, monkeypatch, make
):
    import tlbench.backbones.weights

    def must_not_load(*args, **kwargs):
        raise AssertionError("torch.load was called on an oversized file")

    monkeypatch.setattr(tlbench.backbones.weights, "_torch_load_safely", must_not_load)
    path = tmp_path / "big.pth"
    make(path)
    line = rejects(
        recorded, TINY_RUN + RESNET + ["--weights", str(path)], f"--weights {path}", "MiB"
    )
    assert "more than the" in line and "not loaded" in line


def test_torch_advice_to_load_unsafely_is_never_passed_on():
    from tlbench.backbones.weights import _without_unsafe_advice

    text = (
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
        "will likely succeed. Unsupported operand 149\nmore"
    )
    assert _without_unsafe_advice(text) == "Weights only load failed. Unsupported operand 149"
