"""--lr auto: a grid per strategy, chosen on validation, never on test."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_run import run_tiny, tiny_cells_runner

from tlbench.api.errors import TlbenchError
from tlbench.plan.settings import parse_lr
from tlbench.store.records import load_records
from tlbench.train import lr_search

GRID = (0.001, 0.01, 0.1)


class GridStrategy:
    """linear_probe with a grid of three LRs, so the tests stay quick: ``probe3`` trains
    every candidate to the end, ``halve3`` prunes by successive halving."""

    from tlbench.api.hookspecs import hookimpl

    @hookimpl
    def register_strategies(self, register):
        from tlbench.api.specs import Phase, StrategySpec

        def head(n, a):
            return [Phase("head")]

        register(StrategySpec("probe3", "head only", head, lr_grid=GRID, lr_halving=False))
        register(StrategySpec("halve3", "head only, halving", head, lr_grid=GRID))


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
    import tlbench.run.workspace as workspace_module

    original = workspace_module.make_splits

    def poisoned(*args, **kwargs):
        splits = original(*args, **kwargs)
        generator = torch.Generator().manual_seed(123)
        splits.test_labels = splits.test_labels[
            torch.randperm(len(splits.test_labels), generator=generator)
        ]
        return splits

    monkeypatch.setattr(workspace_module, "make_splits", poisoned)
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
    curves = {0.1: None, 0.01: [(1, 80.0), (2, 90.0)], 0.001: [(1, 85.0), (2, 90.0)]}
    trainer, result = lr_search.search([0.1, 0.01, 0.001], 0, scripted(curves, Boom), Boom, False)
    assert result.chosen == 0.001 and trainer.curve == curves[0.001]  # tie: best val 90 each
    assert result.candidates[0].status == "diverged" and result.halving is None
    with pytest.raises(Boom):
        lr_search.search([0.1], 0, scripted(curves, Boom), Boom)


class Boom(Exception):
    pass


def scripted(curves: dict, diverged: type[Exception], steps_per_epoch: int = 2):
    """``start(lr)`` for lr_search.search: a trainer replaying ``curves[lr]`` (one point
    per step; None diverges at once) that records how far it was trained."""

    class Scripted:
        def __init__(self, curve):
            self.full, self.curve, self.steps_done = curve, [], 0
            self.steps_per_epoch = steps_per_epoch

        def rung_eval_step(self, eta):
            assert eta == lr_search.HALVING_ETA
            return 2  # every scripted curve has 4 points

        def train(self, until=None):
            if self.full is None:
                raise diverged()
            self.steps_done = len(self.full) if until is None else until
            self.curve = self.full[: self.steps_done]
            return self.curve[-1][1]

    return lambda lr: Scripted(curves[lr])


def test_halving_prunes_at_the_rung_and_continues_the_survivor():
    """0.1 leads at the rung and 0.01 finishes higher than it would have: halving
    keeps only 0.1 (the best of 3 // eta = 1 at the rung), trains it on from where it
    stopped, and records the others as pruned at the rung, never trained further."""
    curves = {
        0.1: [(0.5, 70.0), (1, 80.0), (1.5, 82.0), (2, 84.0)],
        0.01: [(0.5, 60.0), (1, 75.0), (1.5, 88.0), (2, 95.0)],
        0.001: [(0.5, 50.0), (1, 60.0), (1.5, 70.0), (2, 80.0)],
    }
    trainer, result = lr_search.search(list(curves), 0, scripted(curves, Boom), Boom)
    assert result.chosen == 0.1 and trainer.steps_done == 4 and trainer.curve == curves[0.1]
    by_lr = {c.lr: c for c in result.candidates}
    assert by_lr[0.1].status == "ok" and by_lr[0.1].val_accuracy == 84.0
    assert by_lr[0.1].rung_val_accuracy == 80.0 and by_lr[0.1].epochs_trained == 2.0
    for lr in (0.01, 0.001):
        assert by_lr[lr].status == "pruned" and by_lr[lr].val_accuracy is None
        assert by_lr[lr].epochs_trained == 1.0  # stopped at the rung
    assert result.halving["kept"] == 1 and result.halving["rung_epochs"] == 1.0
    record = result.to_record()
    assert lr_search.SearchResult.from_record(record).halving["kept"] == 1
    # six candidates keep 6 // 3 = 2; the final choice is among the survivors, on final accuracy
    curves[0.0001] = [(0.5, 65.0), (1, 78.0), (1.5, 90.0), (2, 99.0)]
    curves[1e-5] = [(0.5, 30.0), (1, 40.0), (1.5, 50.0), (2, 60.0)]
    curves[1e-6] = [(0.5, 20.0), (1, 30.0), (1.5, 40.0), (2, 50.0)]
    trainer, result = lr_search.search(list(curves), 0, scripted(curves, Boom), Boom)
    assert lr_search.HALVING_ETA == 3 and result.halving["kept"] == 2
    assert result.chosen == 0.0001
    statuses = [c.status for c in result.candidates]
    assert statuses == ["ok", "pruned", "pruned", "ok", "pruned", "pruned"]


def test_halving_survives_a_diverging_candidate():
    curves = {
        0.1: None,
        0.01: [(0.5, 60.0), (1, 75.0), (1.5, 88.0), (2, 95.0)],
        0.001: [(0.5, 50.0), (1, 60.0), (1.5, 70.0), (2, 80.0)],
    }
    _, result = lr_search.search(list(curves), 0, scripted(curves, Boom), Boom)
    assert [c.status for c in result.candidates] == ["diverged", "ok", "pruned"]
    assert result.chosen == 0.01


def test_a_resumed_trainer_trains_exactly_as_one_call(tiny_plugin, tmp_path):
    """train(until=k) then train() is the same training as train(): same validation
    curve and the same final weights, bit for bit (what halving relies on)."""
    runner, cells = tiny_cells_runner(tmp_path, "partial:1", seeds=[0], lr=0.01)
    torch.manual_seed(0)
    whole = runner.trainer(cells[0], 32, 0.01)
    whole.train()
    torch.manual_seed(0)
    halves = runner.trainer(cells[0], 32, 0.01)
    rung = halves.rung_eval_step(lr_search.HALVING_ETA)
    assert 0 < rung < halves.total_steps
    halves.train(rung)
    assert halves.steps_done == rung and len(halves.curve) < len(whole.curve)
    halves.train()
    assert halves.curve == whole.curve
    resumed = halves.model.state_dict()
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed[name]), name


def test_auto_with_halving_records_the_pruned_candidates(tiny_plugin, tmp_path):
    runner, cells = tiny_cells_runner(tmp_path, "halve3", [GridStrategy()], lr=None)
    (record,) = [runner.run_cell(cell) for cell in runner.finalize(cells)]
    assert record["status"] == "ok", record.get("error")
    search = record["lr_search"]
    statuses = sorted(c["status"] for c in search["candidates"])
    assert statuses == ["ok", "pruned", "pruned"] and search["halving"]["kept"] == 1
    winner = next(c for c in search["candidates"] if c["status"] == "ok")
    assert winner["lr"] == record["lr_chosen"] and record["curve"][-1][1] == winner["val_accuracy"]
    eta = lr_search.HALVING_ETA
    expected = {"grid": list(GRID), "halving": f"eta={eta} at 1/{eta} budget"}
    assert record["config"]["lr_search"] == expected
    runner, cells = tiny_cells_runner(tmp_path / "p", "probe3", [GridStrategy()], lr=None)
    (probe,) = runner.finalize(cells)
    assert probe.config()["lr_search"]["halving"] == "off"


@pytest.mark.parametrize("text", ["0", "-1", "fast", "nan", "12"])
def test_bad_lr_is_a_clear_error(text):
    with pytest.raises(TlbenchError, match="--lr"):
        parse_lr(text)
    assert parse_lr("auto") is None and parse_lr("3e-4") == 3e-4


def test_untimed_steps_are_null_not_zero(tiny_plugin, tmp_path):
    """One step per phase: nothing past the warm-up is timed, so the step-only rate is
    None ("–" in tables) while the end-to-end rate and the inference rate are measured."""
    import tlbench.plugins.registry as plugin_registry
    from tlbench.plan.settings import Cell, make_settings
    from tlbench.report.stats import format_mean_std, summarize
    from tlbench.run.runner import Runner
    from tlbench.train.device import resolve_device

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


def test_the_halving_point_waits_for_the_last_phase(tiny_plugin, tmp_path):
    """Ranked before its fine-tuning phase starts, two_stage would pick the head's LR: the
    rung is the validation point nearest 1/eta of the budget once every phase has begun."""
    runner, cells = tiny_cells_runner(tmp_path, "two_stage", seeds=[0], lr=0.01)
    staged = runner.trainer(cells[0], 32, 0.01)
    last_start = max(staged.phase_boundaries())
    assert 0 < last_start and last_start < staged.rung_eval_step(3) < staged.total_steps
    runner, cells = tiny_cells_runner(tmp_path, "full", seeds=[0], lr=0.01)
    whole = runner.trainer(cells[0], 32, 0.01)
    assert whole.rung_eval_step(2) == whole.steps_per_epoch  # 2 epochs: the end of the first
    points = [s for s in whole.eval_steps() if s < whole.total_steps]
    third = min(points, key=lambda s: abs(3 * s - whole.total_steps))
    assert whole.rung_eval_step(3) == third < whole.steps_per_epoch


def test_no_lr_halving_trains_every_candidate_to_the_end(tiny_plugin, tmp_path):
    """--no-lr-halving (the committed reference's protocol) is its own configuration."""
    import dataclasses

    runner, cells = tiny_cells_runner(tmp_path, "halve3", [GridStrategy()], lr=None)
    slow = [dataclasses.replace(c, settings=dataclasses.replace(c.settings, lr_halving=False))
            for c in cells]  # fmt: skip
    (halved,), (record,) = (
        runner.finalize(cells),
        [runner.run_cell(c) for c in runner.finalize(slow)],
    )
    assert record["config"]["lr_search"]["halving"] == "off"
    assert record["config_hash"] != halved.config_hash
    assert [c["status"] for c in record["lr_search"]["candidates"]] == ["ok"] * len(GRID)
    assert "lr_halving" not in record["config"]
