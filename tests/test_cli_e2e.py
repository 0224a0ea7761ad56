"""End-to-end: the real CLI trains the tiny plugin backbone on synthetic IDX data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import register_tiny
from helpers.cli import tiny_run_args
from helpers.plugins import write_synthetic_idx
from typer.testing import CliRunner

from tlbench.api.errors import UnknownNameError
from tlbench.cli.app import make_app
from tlbench.store.records import RECORDS_FILE

RUN = tiny_run_args(epochs=3, reference=True, device="")  # the scratch row; auto device
FOUR = "linear_probe,partial,full,two_stage"  # the foundation's strategies (+ scratch row)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables are checked for names, so do not let rich fold them at 80 columns."""
    import tlbench.cli.ui

    monkeypatch.setattr(tlbench.cli.ui.console, "width", 250)


def invoke(args: list[str]):
    return CliRunner().invoke(make_app(), args, catch_exceptions=True)


def records(output: Path) -> list[dict]:
    path = output / "t" / RECORDS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The foundation's run, trained once for the module: (synthetic data, output, board)."""
    root = tmp_path_factory.mktemp("e2e")
    synth = write_synthetic_idx(root / "synth")
    output, board = root / "results", root / "BENCHMARKS.md"
    with pytest.MonkeyPatch.context() as patch:
        register_tiny(patch, synth)
        result = invoke(
            RUN + ["--strategies", FOUR, "--output", str(output), "--benchmarks", str(board)]
        )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return synth, output, board


@pytest.fixture
def finished_run(trained_run, tmp_path, monkeypatch):
    """A private copy of the trained run (tests may add to it), with the tiny plugin
    reading the same data, so its cells count as already recorded."""
    synth, output, board = trained_run
    register_tiny(monkeypatch, synth)
    shutil.copytree(output, tmp_path / "results")
    shutil.copy2(board, tmp_path / "BENCHMARKS.md")
    return tmp_path / "results", tmp_path / "BENCHMARKS.md"


def test_run_writes_records_and_leaderboard(finished_run):
    output, board = finished_run
    recs = records(output)
    # 4 strategies + the from-scratch reference row (strategy scratch, random weights)
    assert sorted((r["strategy"], r["weights"]) for r in recs) == sorted(
        [
            ("linear_probe", "imagenet"),
            ("partial:2", "imagenet"),
            ("full", "imagenet"),
            ("two_stage", "imagenet"),
            ("scratch", "random"),
        ]
    )
    for r in recs:
        assert r["status"] == "ok" and r["freeze_verified"], r
        assert r["split_sizes"] == {"train": 200, "val": 100, "test": 100}
        assert r["data_source"].startswith("dir:")
        assert len(r["curve"]) == 3 * 4  # 4 evaluations per epoch
        assert r["curve"][0][0] == pytest.approx(0.25, abs=0.1)
        assert sum(map(sum, r["confusion"])) == 100
        assert r["train_throughput"] > 0 and r["infer_throughput"] > 0
    by = {(r["strategy"], r["weights"]): r for r in recs}
    assert by[("linear_probe", "imagenet")]["trainable_params"] == 16 * 10 + 10
    assert by[("full", "imagenet")]["trainable_params"] == by[("full", "imagenet")]["total_params"]
    two = by[("two_stage", "imagenet")]["trainable_params_per_phase"]
    assert two["head"] == 170 and two["finetune"] == by[("full", "imagenet")]["total_params"]
    text = board.read_text()
    assert "### synth" in text and "epochs to 95% ↓" in text and "partial:2" in text
    pictures = [line.split("](", 1)[1][:-1] for line in text.splitlines() if line.startswith("![")]
    assert len(pictures) == 4 and all((board.parent / p).is_file() for p in pictures)


def test_rerun_adds_no_records_and_force_recomputes(finished_run):
    output, board = finished_run
    before = records(output)
    again = invoke(
        RUN + ["--strategies", FOUR, "--output", str(output), "--benchmarks", str(board)]
    )
    assert again.exit_code == 0
    assert "already recorded" in again.output
    assert len(records(output)) == len(before)
    forced = invoke(
        RUN
        + [
            "--strategies",
            "linear_probe",
            "--no-reference",
            "--output",
            str(output),
            "--benchmarks",
            str(board),
            "--force",
        ]
    )
    assert forced.exit_code == 0
    assert len(records(output)) == len(before) + 1


def test_leaderboard_command_matches_run_output(finished_run, tmp_path):
    output, board = finished_run
    fresh = tmp_path / "again.md"
    assert invoke(["leaderboard", "--output", str(output), "--path", str(fresh)]).exit_code == 0
    assert fresh.read_text() == board.read_text()
    assert (
        invoke(["leaderboard", "--output", str(output), "--path", str(board), "--check"]).exit_code
        == 0
    )
    board.write_text(board.read_text() + "edited by hand\n")
    assert (
        invoke(["leaderboard", "--output", str(output), "--path", str(board), "--check"]).exit_code
        == 1
    )


def test_list_shows_plugin_items_and_origin(tiny_plugin):
    result = invoke(["list", "backbones"])
    assert result.exit_code == 0
    assert "tiny" in result.output and "tests:tiny" in result.output
    assert "efficientnet_lite0" in result.output and "tlbench:backbones" in result.output
    datasets = invoke(["list", "datasets"])
    assert "synth" in datasets.output and "dir:" in datasets.output


def test_unknown_name_suggests_close_match(tiny_plugin):
    result = invoke(["run", "--backbones", "tinyy", "--dry-run"])
    assert isinstance(result.exception, UnknownNameError)
    assert "Did you mean 'tiny'" in str(result.exception)


def test_cli_exit_code_2_and_one_line_for_unknown_backbone():
    proc = subprocess.run(
        [sys.executable, "-m", "tlbench", "run", "--backbones", "resnet19", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "resnet18" in lines[0], proc.stderr


@pytest.mark.slow
def test_dry_run_lists_full_cross_product():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlbench",
            "run",
            "--backbones",
            "all",
            "--datasets",
            "mnist,fashion",
            "--no-reference",
            "--seeds",
            "1",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "56 planned cells" in proc.stdout
    for name in (
        "resnet18",
        "resnet50",
        "vgg16",
        "efficientnet_b0",
        "efficientnet_lite0",
        "mobilenetv2_100",
        "mobilenetv3_large_100",
        "two_stage",
        "partial:2",
    ):
        assert name in proc.stdout
