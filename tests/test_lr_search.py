"""--lr auto: a grid per strategy, chosen on validation, never on test."""

from __future__ import annotations

import pytest
import torch
from tests_helpers import run_tiny, tiny_cells_runner

from tlbench import lr_search
from tlbench.errors import TlbenchError
from tlbench.plan import parse_lr
from tlbench.records import load_records

GRID = (0.001, 0.01, 0.1)


class GridStrategy:
    """linear_probe with a grid of three LRs, so the tests stay quick."""

    from tlbench.hookspecs import hookimpl

    @hookimpl
    def register_strategies(self, register):
        from tlbench.specs import Phase, StrategySpec

        register(StrategySpec("probe3", "head only", lambda n, a: [Phase("head")], lr_grid=GRID))


def test_auto_trains_every_candidate_and_keeps_the_best_on_validation(tiny_plugin, tmp_path):
    record = run_tiny(tmp_path, "probe3", extra_plugins=[GridStrategy()], lr=None)
    assert record["status"] == "ok" and record["config"]["lr"] == "auto"
    search = record["lr_search"]
    assert search["grid"] == list(GRID) and search["seed"] == 0
    assert [c["lr"] for c in search["candidates"]] == list(GRID)
    best = max(search["candidates"], key=lambda c: (c["val_accuracy"], c["best_val_accuracy"]))
    assert search["chosen"] == record["lr_chosen"] == best["lr"]
    assert record["tuning_seconds"] > 0
    assert record["curve"][-1][1] == best["val_accuracy"]  # the cell is the winner's run


def test_the_choice_never_reads_test(tiny_plugin, tmp_path, monkeypatch):
    """Poisoned test labels change the test accuracy, never the LR choice."""
    clean = run_tiny(tmp_path / "clean", "probe3", extra_plugins=[GridStrategy()], lr=None)
    import tlbench.runner as runner_module

    original = runner_module.make_splits

    def poisoned(*args, **kwargs):
        splits = original(*args, **kwargs)
        generator = torch.Generator().manual_seed(123)
        splits.test_labels = splits.test_labels[
            torch.randperm(len(splits.test_labels), generator=generator)
        ]
        return splits

    monkeypatch.setattr(runner_module, "make_splits", poisoned)
    dirty = run_tiny(tmp_path / "dirty", "probe3", extra_plugins=[GridStrategy()], lr=None)
    assert dirty["final_accuracy"] != clean["final_accuracy"]  # the poison reached test
    for key in ("grid", "candidates", "chosen"):
        if key == "candidates":
            strip = lambda cs: [(c["lr"], c["val_accuracy"]) for c in cs]  # noqa: E731
            assert strip(dirty["lr_search"][key]) == strip(clean["lr_search"][key])
        else:
            assert dirty["lr_search"][key] == clean["lr_search"][key]


def test_later_seeds_and_later_runs_reuse_the_rows_choice(tiny_plugin, tmp_path):
    runner, cells = tiny_cells_runner(tmp_path, "probe3", [GridStrategy()], seeds=[0, 1], lr=None)
    runner.run(cells)
    first, second = load_records(tmp_path)
    assert second["lr_search"]["seed"] == 0 and second["tuning_seconds"] == 0
    assert second["lr_chosen"] == first["lr_chosen"]
    # a later run with a third seed finds the choice in the records, searches nothing
    runner, cells = tiny_cells_runner(
        tmp_path, "probe3", [GridStrategy()], seeds=[0, 1, 2], lr=None
    )
    runner.run(cells)
    third = load_records(tmp_path)[-1]
    assert third["seed"] == 2 and third["lr_search"]["seed"] == 0
    assert third["lr_chosen"] == first["lr_chosen"]


def test_fixed_lr_skips_the_search(tiny_plugin, tmp_path):
    record = run_tiny(tmp_path, "probe3", extra_plugins=[GridStrategy()], lr=0.01)
    assert record["lr_chosen"] == 0.01 and record["lr_search"] is None
    assert record["config"]["lr"] == 0.01


def test_selection_prefers_validation_then_smaller_lr():
    class Trained:
        def __init__(self, curve):
            self.curve = curve

    class Boom(Exception):
        pass

    curves = {0.1: None, 0.01: [(1, 80.0), (2, 90.0)], 0.001: [(1, 85.0), (2, 90.0)]}

    def train(lr):
        if curves[lr] is None:
            raise Boom()
        return Trained(curves[lr])

    trainer, result = lr_search.search([0.1, 0.01, 0.001], 0, train, Boom)
    assert result.chosen == 0.001 and trainer.curve is curves[0.001]  # tie: best val 90 each
    assert result.candidates[0].status == "diverged"
    with pytest.raises(Boom):
        lr_search.search([0.1], 0, train, Boom)


@pytest.mark.parametrize("text", ["0", "-1", "fast", "nan", "12"])
def test_bad_lr_is_a_clear_error(text):
    with pytest.raises(TlbenchError, match="--lr"):
        parse_lr(text)
    assert parse_lr("auto") is None and parse_lr("3e-4") == 3e-4


def test_untimed_steps_are_null_not_zero(tiny_plugin, tmp_path):
    """One step per phase: nothing past the warm-up is timed, so the step-only rate is
    None ("–" in tables) while the end-to-end rate and the inference rate are measured."""
    import tlbench.registry as plugin_registry
    from tlbench.device import resolve_device
    from tlbench.plan import Cell, make_settings
    from tlbench.runner import Runner
    from tlbench.stats import format_mean_std, summarize

    pm = plugin_registry.get_plugin_manager()
    settings = make_settings(
        False, 0.01, 1, epochs=1, batch_size=256, resolution=16, train_size=200,
        val_size=100, test_size=100,
    )  # fmt: skip
    cell = Cell("tiny", "linear_probe", "synth", 0, "imagenet", 16, 95.0, settings)
    runner = Runner(plugin_registry.collect(pm), pm.hook, resolve_device("cpu"), tmp_path)
    record = runner.run_cell(cell)
    assert record["status"] == "ok", record.get("error")
    assert record["train_step_throughput"] is None
    assert record["train_throughput"] > 0 and record["train_seconds"] > 0
    assert record["infer_throughput"] > 0 and record["infer_batch"] > 0
    assert set(record["one_time_seconds"]) == {"cache_fill", "layout_trials", "backbone_build"}
    assert format_mean_std(summarize([]), 0) == "–"


def test_shared_cache_fill_is_charged_to_every_cell(tiny_plugin, tmp_path):
    """The second cell of a shared frozen-prefix cache pays no fill but is charged its cost."""
    runner, cells = tiny_cells_runner(tmp_path, "linear_probe", seeds=[0], lr=0.01)
    first = runner.run_cell(cells[0])
    second = runner.run_cell(cells[0])
    assert first["one_time_seconds"]["cache_fill"] > 0
    assert second["one_time_seconds"]["cache_fill"] == 0
    assert second["cache_fill_charged_seconds"] == first["cache_fill_charged_seconds"] > 0
