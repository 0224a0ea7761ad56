"""--schedule: a cosine LR schedule with warm-up over the whole budget, hashed, resumable."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.tiny_run import tiny_cells_runner

from tlbench.api.errors import TlbenchError
from tlbench.plan.settings import make_settings
from tlbench.train.schedule import lr_factor


def test_cosine_warms_up_then_decays_to_zero():
    total = 100
    factors = [lr_factor("cosine", step, total) for step in range(total)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == 1.0  # 5 warm-up steps
    assert factors[4:] == sorted(factors[4:], reverse=True)  # then never rises
    assert factors[-1] < 0.001 and factors[52] == pytest.approx(0.5, abs=0.02)
    assert {lr_factor("constant", s, total) for s in range(total)} == {1.0}


def test_every_phase_group_follows_the_schedule(tiny_plugin, tmp_path):
    """two_stage's head and backbone groups (backbone at its own LR scale) are both
    scaled by the factor of the global step, also after a pause (a resumed LR candidate)."""
    runner, cells = tiny_cells_runner(tmp_path, "two_stage", seeds=[0], lr=0.01)
    cell = dataclasses.replace(
        cells[0], settings=dataclasses.replace(cells[0].settings, schedule="cosine")
    )
    trainer = runner.trainer(cell, 32, 0.01)
    stop = trainer.total_steps - 2
    trainer.train(stop)
    groups = trainer.optimizer.param_groups
    assert len(groups) > 1 and len({g["base_lr"] for g in groups}) > 1
    factor = lr_factor("cosine", stop - 1, trainer.total_steps)
    for group in groups:
        assert group["lr"] == pytest.approx(group["base_lr"] * factor)
    trainer.train()
    last = lr_factor("cosine", trainer.total_steps - 1, trainer.total_steps)
    assert groups[0]["lr"] == pytest.approx(groups[0]["base_lr"] * last) and last < factor


def test_the_schedule_is_part_of_the_config_only_when_not_constant(tiny_plugin, tmp_path):
    runner, cells = tiny_cells_runner(tmp_path, "full", seeds=[0], lr=0.01)
    (constant,) = runner.finalize(cells)
    cosine = dataclasses.replace(
        constant, settings=dataclasses.replace(constant.settings, schedule="cosine")
    )
    assert "schedule" not in constant.config() and cosine.config()["schedule"] == "cosine"
    assert cosine.config_hash != constant.config_hash


def test_an_unknown_schedule_is_a_clear_error():
    with pytest.raises(
        TlbenchError, match="--schedule 'linear' is unknown: accepted constant, cosine"
    ):
        make_settings(False, 0.01, 2, schedule="linear")
