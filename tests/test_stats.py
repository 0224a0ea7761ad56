"""Statistics on hand-computed examples: t quantiles, CIs, censoring, pairing, calibration."""

from __future__ import annotations

import math

import pytest
import torch

from tlbench.report.stats import (
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
from tlbench.train.metrics import confidence_stats

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


# ---------------------------------------------------------------- one row per config, bootstrap


def _record(strategy, seed, correct, lr=0.001, **extra):
    """An ok record whose test_correct holds ``correct`` (bools, the test split's order)."""
    from tlbench.train.metrics import encode_correct

    correct = torch.as_tensor(correct, dtype=torch.bool)
    config = {"dataset": "d", "backbone": "b", "strategy": strategy, "weights": "imagenet",
              "seed": seed, "lr": lr, "epochs": 2, "data": "sha256:0"}  # fmt: skip
    return {
        "dataset": "d", "backbone": "b", "strategy": strategy, "weights": "imagenet",
        "seed": seed, "status": "ok", "config": config, "config_hash": f"{strategy}{seed}{lr}",
        "final_accuracy": 100 * float(correct.double().mean()), "test_correct":
        encode_correct(correct), "split_sizes": {"train": 10, "val": 10, "test": len(correct)},
        "epochs_to_threshold": None, "epoch_budget": 2, "trainable_params": 1,
        **extra,
    }  # fmt: skip


def _hits(count, total=1000, offset=0):
    """``count`` correct images out of ``total``, starting at ``offset`` (wrapping)."""
    flags = torch.zeros(total, dtype=torch.bool)
    flags[(torch.arange(count) + offset) % total] = True
    return flags


def test_rows_never_pool_different_configs():
    from tlbench.report.leaderboard import dataset_table

    records = [_record("full", s, _hits(900), lr=1e-3) for s in (0, 1)]
    records += [_record("full", s, _hits(800), lr=1e-2) for s in (0, 1)]  # only lr differs
    rows = group_rows(records)
    assert len(rows) == 2 and [len(r.records) for r in rows] == [2, 2]
    assert rows[0].config["lr"] == 1e-3 and "seed" not in rows[0].config
    table = dataset_table(rows, "95")
    assert "| settings" in table and "lr=0.001" in table and "lr=0.01" in table
    same = group_rows([_record("full", s, _hits(900)) for s in (0, 1)])
    assert len(same) == 1 and "settings" not in dataset_table(same, "95")


def test_bootstrap_interval_is_reproducible_and_binomial_with_one_seed():
    from tlbench.report.stats import bootstrap_interval

    one = _hits(900).double().numpy()[None, :]
    low, high = bootstrap_interval(one)
    assert (low, high) == bootstrap_interval(one)  # fixed RNG seed
    # binomial: 1.96 * sqrt(0.9 * 0.1 / 1000) = 1.86 pp either side of 90%
    assert low == pytest.approx(90 - 1.86, abs=0.3) and high == pytest.approx(90 + 1.86, abs=0.3)


def test_verdict_needs_three_paired_seeds():
    from tlbench.report.leaderboard import paired_table

    def run(seeds):
        records = [_record("full", s, _hits(950, offset=s)) for s in seeds]
        records += [_record("bitfit", s, _hits(650, offset=s)) for s in seeds]
        return paired_table(group_rows(records))

    two = run((0, 1))
    assert "not enough evidence (2 seeds)" in two and "worse than" not in two
    three = run((0, 1, 2))
    assert "worse than full" in three and "| 3 " in three


def test_equal_per_seed_differences_still_have_a_ci_of_positive_width():
    from tlbench.report.stats import bootstrap_summary, verdict

    # -1.0 pp on every seed (the rounding-free analogue of bitfit's "-31.70 ± 0.00"): full
    # alone is right on 60 images, the other alone on 50; the same for each seed
    full = {s: _hits(900).numpy() for s in range(3)}
    other = {s: _hits(890, offset=60).numpy() for s in range(3)}
    diff = bootstrap_summary(other, full)
    assert diff.n == 3 and diff.mean == pytest.approx(-1.0) and diff.std == 0.0
    assert diff.low < diff.mean < diff.high and diff.high - diff.low > 2.0  # test-set error
    assert diff.method == "bootstrap" and verdict(diff) == "no clear difference (CI spans 0)"
    # 10 discordant images, all against the other: the interval excludes 0
    one_sided = bootstrap_summary({s: _hits(890).numpy() for s in range(3)}, full)
    assert one_sided.high < 0 and verdict(one_sided) == "worse than full"


def test_records_without_per_image_correctness_fall_back_to_t_and_never_judge_two_seeds():
    from tlbench.report.leaderboard import paired_table
    from tlbench.report.stats import verdict

    records = [_record("full", s, _hits(950)) for s in (0, 1)]
    records += [_record("bitfit", s, _hits(650)) for s in (0, 1)]
    for record in records:
        del record["test_correct"]
    text = paired_table(group_rows(records))
    assert "not enough evidence (2 seeds)" in text and "worse" not in text
    flat = paired_difference({0: 60.0, 1: 60.0, 2: 60.0}, {0: 90.0, 1: 90.0, 2: 90.0})
    assert flat.low == flat.high  # equal differences, no per-image data: no real interval
    assert verdict(flat).startswith("not enough evidence")


def test_row_accuracy_interval_and_bn_lr_columns():
    from tlbench.report.leaderboard import dataset_table

    records = [
        _record("two_stage", s, _hits(900 + s), bn_policy="frozen,train", lr_chosen=lr)
        for s, lr in ((0, 0.003), (1, 0.001), (2, 0.003))
    ]
    (row,) = group_rows(records)
    accuracy = row.accuracy()
    assert accuracy.method == "bootstrap" and accuracy.mean == pytest.approx(90.1)
    assert accuracy.low < 89.0 and accuracy.high > 91.0  # covers test sampling error
    table = dataset_table([row], "95")
    assert "frozen,train" in table and "0.001–0.003" in table
    assert "| BN " in table.splitlines()[0] and "| LR " in table.splitlines()[0]
    bare = dataset_table(group_rows([_record("full", 0, _hits(900))]), "95")
    assert bare.splitlines()[2].count("| –") >= 2  # no bn_policy / lr_chosen: "–"


def test_rows_of_the_same_names_are_told_apart_in_pictures():
    from tlbench.report import plots
    records = [_record("full", s, _hits(900), lr=1e-3) for s in (0, 1)]
    records += [_record("full", s, _hits(800), lr=1e-2) for s in (0, 1)]
    rows = group_rows(records)
    assert [r.variant for r in rows] == ["lr=0.001", "lr=0.01"]
    picture = plots.Picture("d", "tradeoff", "", "", tuple(rows))
    assert [picture.label(r) for r in rows] == ["full (lr=0.001)", "full (lr=0.01)"]


def test_few_seeds_widen_the_bootstrap_to_the_t_interval():
    from tlbench.report.stats import bootstrap_summary, verdict

    # per-seed differences +17, +9, +1 pp (images 0..99 right for "other" only on some)
    full = {s: _hits(500).numpy() for s in range(3)}
    other = {s: _hits(500 + gain).numpy() for s, gain in enumerate((170, 90, 10))}
    diff = bootstrap_summary(other, full)
    t = paired_difference({s: float(d) for s, d in enumerate((17, 9, 1))}, {0: 0, 1: 0, 2: 0})
    assert diff.mean == pytest.approx(9.0) and diff.std == pytest.approx(t.std)
    assert diff.low <= t.low < 0 and diff.high >= t.high  # at least the t interval
    assert verdict(diff) == "no clear difference (CI spans 0)"


def test_the_header_says_which_strategies_were_searched_how():
    """One rule per group of strategies, the common one first; a grid that is a property
    of the strategy is not a differing setting between rows of different strategies."""
    from tlbench.report.leaderboard import differing_settings
    from tlbench.report.run_header import _lr_setting
    from tlbench.report.stats import group_rows

    def record(strategy, halving, seed=0):
        search = {"grid": [0.1, 0.01] if strategy == "linear_probe" else [1.0], "halving": halving}
        config = {"lr": "auto", "lr_search": search, "strategy": strategy, "seed": seed}
        return {"strategy": strategy, "config": config, "backbone": "b", "dataset": "d",
                "weights": "w", "seed": seed, "status": "ok", "final_accuracy": 50.0,
                "config_hash": f"{strategy}{seed}", "row_hash": strategy}  # fmt: skip

    ok = [record("full", "eta=3 at 1/3 budget"), record("bitfit", "eta=3 at 1/3 budget"),
          record("linear_probe", "off")]  # fmt: skip
    assert _lr_setting("auto", ok) == (
        "auto (each strategy's grid, chosen on validation: LR column; successive halving "
        "eta=3 at 1/3 budget for the others; every candidate to the full budget for "
        "linear_probe)"
    )
    assert _lr_setting("auto", ok[:2]).endswith("; successive halving eta=3 at 1/3 budget)")
    assert differing_settings(group_rows(ok)) == []
    changed = ok + [record("full", "off", seed=1)]
    changed[-1]["config_hash"] = "other"
    assert differing_settings(group_rows(changed)) == ["lr_search.halving"]
