"""Statistics over seeds: mean ± std, confidence intervals, censored times, paired diffs.

Seeds are paired (the same seed gives every strategy the same training subset, data
order and head init), so a strategy is compared with ``full`` through per-seed
differences, whose spread is usually far smaller than either strategy's own.  The test
images are the same for every cell of a dataset (same test size), so the differences
are paired per image too: :func:`bootstrap_interval` resamples seeds *and* test images
(records' ``test_correct``), so an interval covers the test set's sampling error as well
as seed-to-seed variation.  Verdicts need at least :data:`MIN_SEEDS_FOR_VERDICT` paired
seeds.  No scipy: the Student t quantile (the fallback for records without per-image
correctness) comes from the closed-form t distribution for integer degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Mapping, Optional, Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 9  # fixed: the same records always give the same BENCHMARKS.md
MIN_SEEDS_FOR_VERDICT = 3


def t_within(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` >= 1 (closed form, exact).

    With theta = atan(t / sqrt(df)), the classic finite series in cos(theta)
    (Abramowitz & Stegun 26.7.3/26.7.4): odd df adds an arc term, even df does not.
    """
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        term, series = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            series += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    term, series = 1.0, 1.0
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        series += term
    return math.sin(theta) * series


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value: P(|T| <= t) = confidence (12.706 for df=1, 95%)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    low, high = 0.0, 1.0
    while t_within(high, df) < confidence:
        high *= 2
    for _ in range(200):  # bisection to float precision
        mid = (low + high) / 2
        if t_within(mid, df) < confidence:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2


@dataclass(frozen=True)
class Summary:
    """Mean, sample std and the t confidence interval of ``n`` values (no CI for n < 2)."""

    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value
    low: Optional[float] = None  # CI bounds; None when n < 2 (t) or no interval
    high: Optional[float] = None
    method: str = "t"  # "t": Student t over seeds; "bootstrap": seeds x test images


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Optional[Summary]:
    """``None`` for no values; the CI is mean ± t(n-1) * std / sqrt(n)."""
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(1, mean, 0.0)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1, confidence) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class CensoredSummary:
    """Times that may be censored (``None``: not reached within ``budget``).

    Nothing censored: ``summary`` holds mean/std/CI.  Some censored: averaging only the
    reached ones would flatter the strategy, so ``median`` is given instead, counting a
    censored time as larger than every reached one (it is: > budget >= any reached time);
    when a middle value is censored, the median is only known to exceed ``median`` and
    ``median_is_bound`` is set.
    """

    n: int
    censored: int
    budget: float
    summary: Optional[Summary]  # when nothing is censored
    median: Optional[float] = None  # when something is, and something was reached
    median_is_bound: bool = False


def summarize_censored(
    values: Sequence[Optional[float]], budget: float, confidence: float = CONFIDENCE
) -> CensoredSummary:
    reached = sorted(v for v in values if v is not None)
    censored = len(values) - len(reached)
    if censored == 0:
        return CensoredSummary(len(values), 0, budget, summarize(reached, confidence))
    if not reached:
        return CensoredSummary(len(values), censored, budget, None)
    ordered = [*reached, *([math.inf] * censored)]
    n = len(ordered)
    middle = ordered[(n - 1) // 2 : n // 2 + 1]
    bound = any(math.isinf(m) for m in middle)
    median = sum(budget if math.isinf(m) else m for m in middle) / len(middle)
    return CensoredSummary(n, censored, budget, None, median, bound)


def paired_difference(
    values: Mapping[int, float], baseline: Mapping[int, float], confidence: float = CONFIDENCE
) -> Optional[Summary]:
    """Summary of ``values[s] - baseline[s]`` over the seeds ``s`` both have (t interval)."""
    seeds = sorted(set(values) & set(baseline))
    return summarize([values[s] - baseline[s] for s in seeds], confidence)


def bootstrap_interval(
    values: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile interval of 100 x the mean of ``values`` [seeds, test images].

    Each resample draws the seeds with replacement and, independently, the test images
    with replacement (one draw of images for all seeds: the images are shared), and takes
    the mean over the drawn (seed, image) pairs.  ``values`` holds per-image correctness
    (0/1: an accuracy) or its paired difference between two cells (-1/0/1: a difference
    of accuracies).  A fixed RNG seed makes the interval a function of the records.
    """
    values = np.asarray(values, dtype=np.float64)
    n, m = values.shape
    if n == 0 or m == 0:
        raise ValueError("bootstrap needs at least one seed and one image")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // m)  # resamples per block: at most ~2M floats at once
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        seed_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size)  # [size, n]
        per_image = seed_counts @ values  # [size, m]: sum over the drawn seeds
        images = rng.integers(0, m, size=(size, m), dtype=np.int32)
        images += (np.arange(size, dtype=np.int32) * m)[:, None]  # into the flat array
        means[start : start + size] = per_image.ravel()[images].sum(axis=1) / (n * m)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return 100 * float(low), 100 * float(high)


def bootstrap_summary(
    correct: Mapping[int, np.ndarray],
    baseline: Optional[Mapping[int, np.ndarray]] = None,
    confidence: float = CONFIDENCE,
) -> Optional[Summary]:
    """Mean accuracy (or, with ``baseline``, mean paired difference) over seeds, in
    percentage points, with the seeds x test images bootstrap interval, widened where
    needed to the Student-t interval over seeds combined with the test images' standard
    error (few seeds: the bootstrap alone is too narrow).

    ``correct[seed]``: bool per test image.  With a baseline only the seeds both have
    count, and the difference is taken image by image.  ``std`` is the sample std of the
    per-seed values, as in :func:`summarize`.
    """
    seeds = sorted(correct if baseline is None else set(correct) & set(baseline))
    if not seeds:
        return None
    rows = [np.asarray(correct[s], dtype=np.float64) for s in seeds]
    if baseline is not None:
        rows = [
            r - np.asarray(baseline[s], dtype=np.float64) for r, s in zip(rows, seeds, strict=True)
        ]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("per-image values of different lengths: not the same test images")
    matrix = np.stack(rows)
    per_seed = [100 * float(r.mean()) for r in rows]
    mean = math.fsum(per_seed) / len(per_seed)
    std = (
        math.sqrt(math.fsum((v - mean) ** 2 for v in per_seed) / (len(per_seed) - 1))
        if len(per_seed) > 1
        else 0.0
    )
    low, high = bootstrap_interval(matrix, confidence=confidence)
    # A bootstrap over 3 seeds can only resample 3 values: its seed part under-covers
    # (measured: linear_probe - full on mnist, per-seed +17.0, +8.8, +1.4 pp on 500 test
    # images: bootstrap [+0.60, +17.40], widened [-10.69, +28.83]).  So the interval is
    # widened to at least mean ± sqrt(t_(n-1)^2 s^2 / n + z^2 se_img^2): Student t over
    # the seeds plus the standard error over the shared test images.
    half = _t_plus_images(matrix, std, confidence)
    if half is not None:
        low, high = min(low, mean - half), max(high, mean + half)
    return Summary(len(seeds), mean, std, low, high, method="bootstrap")


def _t_plus_images(matrix: np.ndarray, std: float, confidence: float) -> Optional[float]:
    """Half width from seed spread (Student t) and test-image sampling (normal), in pp."""
    n, m = matrix.shape
    if n < 2 or m < 2:
        return None
    seeds = t_quantile(n - 1, confidence) * std / math.sqrt(n)
    per_image = 100 * matrix.mean(axis=0)  # each image's mean over the seeds
    z = NormalDist().inv_cdf(0.5 + confidence / 2)  # 1.96 at 95%
    images = z * float(per_image.std(ddof=1)) / math.sqrt(m)
    return math.hypot(seeds, images)


def verdict(diff: Optional[Summary], baseline: str = "full") -> str:
    """What a paired difference supports: only from >= MIN_SEEDS_FOR_VERDICT seeds and a
    CI of positive width that excludes 0; otherwise it says why not."""
    if diff is None:
        return "no paired seeds"
    if diff.n < MIN_SEEDS_FOR_VERDICT:
        seeds = "seed" if diff.n == 1 else "seeds"
        return f"not enough evidence ({diff.n} {seeds})"
    if diff.low is None or diff.high is None or diff.high <= diff.low:
        return "not enough evidence (no interval: equal per-seed differences, no per-image data)"
    if diff.low > 0:
        return f"better than {baseline}"
    if diff.high < 0:
        return f"worse than {baseline}"
    return "no clear difference (CI spans 0)"


# ---------------------------------------------------------------- text for the tables


def format_mean_std(summary: Optional[Summary], digits: int) -> str:
    if summary is None:
        return "–"
    text = f"{summary.mean:,.{digits}f}"
    return text if summary.n == 1 else f"{text} ± {summary.std:,.{digits}f}"


def format_ci(
    summary: Optional[Summary], digits: int, signed: bool = False, mark_t: bool = False
) -> str:
    """``[low, high]``; ``mark_t`` appends `` (t)`` to a Student-t interval (where a
    table's intervals are otherwise bootstrap ones)."""
    if summary is None or summary.low is None:
        return "–"
    sign = "+" if signed else ""
    text = f"[{summary.low:{sign},.{digits}f}, {summary.high:{sign},.{digits}f}]"
    return text + (" (t)" if mark_t and summary.method == "t" else "")


def format_censored(c: CensoredSummary, digits: int = 2) -> str:
    """The epochs-to-threshold cell text; the CI goes in its own column (format_ci)."""
    if c.n == 0:
        return "–"
    budget = f"{c.budget:g}"
    if c.censored == 0:
        return format_mean_std(c.summary, digits)
    if c.median is None:
        return f"not reached in {budget}" + (f" ({c.censored}/{c.n})" if c.n > 1 else "")
    median = f"> {c.median:.{digits}f}" if c.median_is_bound else f"{c.median:.{digits}f}"
    return f"median {median} ({c.censored}/{c.n} not reached in {budget})"


# ---------------------------------------------------------------- rows over seeds


@dataclass
class RowGroup:
    """The records of one leaderboard row: one configuration (the config minus the seed,
    ``records.row_hash``), over its seeds."""

    dataset: str
    backbone: str
    strategy: str
    weights: str
    records: list  # every status, in record order
    key: str = ""  # records.row_hash of the config ("" for records without one)
    config: dict = field(default_factory=dict)  # the config minus the seed
    variant: str = ""  # what tells it from rows of the same names ("lr=0.01"), else ""

    @property
    def ok(self) -> list:
        return [r for r in self.records if r.get("status") == "ok"]

    def by_seed(self, key: str) -> dict[int, float]:
        """``{seed: value}`` over the ok records that have ``key`` (paired comparisons)."""
        return {r["seed"]: r[key] for r in self.ok if r.get(key) is not None}

    def correct_by_seed(self) -> Optional[dict[int, np.ndarray]]:
        """``{seed: per-test-image correctness}``; None unless every ok record has it
        (``test_correct``) for the same number of test images."""
        from tlbench.train.metrics import decode_correct

        ok = self.ok
        if not ok or any(not r.get("test_correct") or "split_sizes" not in r for r in ok):
            return None
        counts = {r["split_sizes"]["test"] for r in ok}
        if len(counts) != 1:
            return None
        (count,) = counts
        return {r["seed"]: decode_correct(r["test_correct"], count) for r in ok}

    def accuracy(self) -> Optional[Summary]:
        """Final test accuracy over seeds: the seeds x test images bootstrap interval
        when per-image correctness is recorded, else the t interval over seeds."""
        correct = self.correct_by_seed()
        if correct:
            return bootstrap_summary(correct)
        return self.summary("final_accuracy")

    def summary(self, key: str) -> Optional[Summary]:
        return summarize([r[key] for r in self.ok if r.get(key) is not None])

    def mean(self, key: str, default: float = math.nan) -> float:
        found = self.summary(key)
        return found.mean if found is not None else default


def group_rows(records: Sequence[Mapping]) -> list[RowGroup]:
    """One row per configuration (config minus seed), in order of first appearance
    (records are in run order: deterministic).  Records differing in any setting (lr,
    batch, data, plugin version, ...) never pool, whatever their names."""
    from tlbench.store.records import row_hash

    groups: dict[tuple, RowGroup] = {}
    for record in records:
        config = record.get("config")
        row = row_hash(config) if isinstance(config, dict) else ""
        names = (record["dataset"], record["backbone"], record["strategy"], record["weights"])
        key = (*names, row)
        if key not in groups:
            rest = {k: v for k, v in (config or {}).items() if k != "seed"}
            groups[key] = RowGroup(*names, records=[], key=row, config=rest)
        groups[key].records.append(record)
    rows = list(groups.values())
    _name_variants(rows)
    return rows


def _name_variants(rows: list[RowGroup]) -> None:
    """Rows that share dataset, backbone, strategy and weights get a ``variant``: the
    config keys (flattened) in which they differ, with their values."""
    by_names: dict[tuple, list[RowGroup]] = {}
    for row in rows:
        by_names.setdefault((row.dataset, row.backbone, row.strategy, row.weights), []).append(row)
    for same in by_names.values():
        if len(same) < 2:
            continue
        flat = [flatten(row.config) for row in same]
        keys = sorted({k for config in flat for k in config})
        differing = [k for k in keys if len({repr(c.get(k)) for c in flat}) > 1]
        for row, config in zip(same, flat, strict=True):
            row.variant = ", ".join(f"{k}={config.get(k)}" for k in differing)


def flatten(config: Mapping, prefix: str = "") -> dict:
    """``{"plugins": {"backbone": x}}`` -> ``{"plugins.backbone": x}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
