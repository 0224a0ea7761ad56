"""Statistics on hand-computed examples: t quantiles, CIs, censoring, pairing, calibration."""

from __future__ import annotations

import math

import pytest
import torch

from tlbench.metrics import confidence_stats
from tlbench.stats import (
    format_censored,
    format_ci,
    format_mean_std,
    group_rows,
    paired_difference,
    summarize,
    summarize_censored,
    t_quantile,
    t_within,
)

# Two-sided 95% critical values of Student's t (any printed table).
T_TABLE = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281,
           29: 2.0452, 30: 2.0423, 120: 1.9799}  # fmt: skip


@pytest.mark.parametrize("df,expected", sorted(T_TABLE.items()))
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(df) == pytest.approx(expected, abs=5e-5)


def test_t_distribution_closed_forms():
    assert t_within(1.0, 1) == pytest.approx(0.5)  # Cauchy: 2 atan(1) / pi
    assert t_within(1.0, 2) == pytest.approx(1 / math.sqrt(3))  # t / sqrt(2 + t^2)
    assert t_within(0.0, 7) == 0.0
    assert t_quantile(1000) == pytest.approx(1.9623, abs=5e-5)  # -> 1.96 as df grows
    assert t_quantile(4, confidence=0.99) == pytest.approx(4.6041, abs=5e-5)


def test_t_quantile_agrees_with_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 6, 17, 63):
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)


def test_summary_mean_std_ci_by_hand():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; std sqrt(5/3) = 1.290994; half width 3.182446 * 1.290994 / 2 = 2.054260
    assert (s.n, s.mean) == (4, 2.5)
    assert s.std == pytest.approx(1.290994, abs=1e-6)
    assert (s.low, s.high) == (pytest.approx(0.445740, abs=1e-6), pytest.approx(4.554260, abs=1e-6))
    assert format_mean_std(s, 2) == "2.50 ± 1.29"
    assert format_ci(s, 2) == "[0.45, 4.55]"


def test_one_seed_has_no_interval():
    s = summarize([97.25])
    assert (s.mean, s.std, s.low, s.high) == (97.25, 0.0, None, None)
    assert format_mean_std(s, 2) == "97.25" and format_ci(s, 2) == "–"
    assert summarize([]) is None and format_mean_std(None, 2) == "–"


def test_censored_times_are_never_averaged_as_reached():
    full = summarize_censored([0.5, 0.75], budget=3)
    # mean 0.625, std 0.176777, half width 12.706205 * 0.176777 / sqrt(2) = 1.588276
    assert full.censored == 0 and full.summary.mean == 0.625
    assert full.summary.high == pytest.approx(2.213276, abs=1e-6)
    assert format_censored(full) == "0.62 ± 0.18"

    some = summarize_censored([1.0, None, 2.0], budget=3)  # sorted 1, 2, >3: median 2
    assert (some.censored, some.summary, some.median, some.median_is_bound) == (1, None, 2.0, False)
    assert format_censored(some) == "median 2.00 (1/3 not reached in 3)"

    half = summarize_censored([1.0, None], budget=3)  # median of 1 and >3: > (1 + 3) / 2
    assert (half.median, half.median_is_bound) == (2.0, True)
    assert format_censored(half) == "median > 2.00 (1/2 not reached in 3)"

    assert format_censored(summarize_censored([None, None], budget=3)) == "not reached in 3 (2/2)"
    assert format_censored(summarize_censored([None], budget=5)) == "not reached in 5"


def test_paired_difference_uses_common_seeds_only():
    strategy = {0: 97.0, 1: 98.0, 2: 96.5}
    full = {0: 96.0, 1: 97.5, 2: 96.0, 3: 99.0}  # seed 3 has no partner
    d = paired_difference(strategy, full)
    # differences 1, 0.5, 0.5: mean 2/3, std sqrt(1/12), so std/sqrt(3) = 1/6 exactly
    assert d.n == 3 and d.mean == pytest.approx(2 / 3)
    assert d.std == pytest.approx(0.288675, abs=1e-6)
    assert (d.low, d.high) == (
        pytest.approx(2 / 3 - 4.302653 / 6, abs=1e-6),
        pytest.approx(2 / 3 + 4.302653 / 6, abs=1e-6),
    )
    assert format_ci(d, 2, signed=True) == "[-0.05, +1.38]"
    assert paired_difference({0: 1.0}, {1: 2.0}) is None


def test_group_rows_keeps_record_order_and_pairs_by_seed():
    records = [
        {"dataset": "d", "backbone": "b", "strategy": "s", "weights": "w", "seed": 1,
         "status": "ok", "final_accuracy": 90.0},
        {"dataset": "d", "backbone": "b", "strategy": "full", "weights": "w", "seed": 0,
         "status": "ok", "final_accuracy": 95.0},
        {"dataset": "d", "backbone": "b", "strategy": "s", "weights": "w", "seed": 0,
         "status": "failed"},
    ]  # fmt: skip
    rows = group_rows(records)
    assert [r.strategy for r in rows] == ["s", "full"]
    assert len(rows[0].records) == 2 and rows[0].by_seed("final_accuracy") == {1: 90.0}


def test_confidence_and_ece_by_hand():
    conf = torch.tensor([0.95, 0.90, 0.62, 0.30])
    correct = torch.tensor([True, True, False, True])
    stats = confidence_stats(conf, correct)
    assert stats["confidence_correct"] == pytest.approx((0.95 + 0.90 + 0.30) / 3, abs=1e-6)
    assert stats["confidence_wrong"] == pytest.approx(0.62, abs=1e-6)
    # one prediction per 1/15-wide bin: ECE = mean |correct - confidence|
    assert stats["ece"] == pytest.approx((0.05 + 0.10 + 0.62 + 0.70) / 4, abs=1e-6)

    shared = confidence_stats(torch.tensor([0.95, 0.96]), torch.tensor([True, False]))
    # both in bin (14/15, 1]: accuracy 0.5, confidence 0.955 -> ECE 0.455
    assert shared["ece"] == pytest.approx(0.455, abs=1e-6)
    perfect = confidence_stats(torch.tensor([1.0, 1.0]), torch.tensor([True, True]))
    assert perfect == {"confidence_correct": 1.0, "confidence_wrong": None, "ece": 0.0}
