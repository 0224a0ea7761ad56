"""Statistics over seeds: mean ± std, t confidence intervals, censored times, paired diffs.

Seeds are paired (the same seed gives every strategy the same data order and head init),
so a strategy is compared with ``full`` through per-seed differences, whose spread is
usually far smaller than either strategy's own.  No scipy: the Student t quantile comes
from the closed-form t distribution function for integer degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

CONFIDENCE = 0.95


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
    low: Optional[float] = None  # CI bounds; None when n < 2
    high: Optional[float] = None

    @property
    def half_width(self) -> Optional[float]:
        return None if self.low is None else self.mean - self.low


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
    """Summary of ``values[s] - baseline[s]`` over the seeds ``s`` both have."""
    seeds = sorted(set(values) & set(baseline))
    return summarize([values[s] - baseline[s] for s in seeds], confidence)


# ---------------------------------------------------------------- text for the tables


def format_mean_std(summary: Optional[Summary], digits: int) -> str:
    if summary is None:
        return "–"
    text = f"{summary.mean:,.{digits}f}"
    return text if summary.n == 1 else f"{text} ± {summary.std:,.{digits}f}"


def format_ci(summary: Optional[Summary], digits: int, signed: bool = False) -> str:
    if summary is None or summary.low is None:
        return "–"
    sign = "+" if signed else ""
    return f"[{summary.low:{sign},.{digits}f}, {summary.high:{sign},.{digits}f}]"


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
    """The records of one leaderboard row: dataset x backbone x strategy x weights."""

    dataset: str
    backbone: str
    strategy: str
    weights: str
    records: list  # every status, in record order

    @property
    def ok(self) -> list:
        return [r for r in self.records if r.get("status") == "ok"]

    def by_seed(self, key: str) -> dict[int, float]:
        """``{seed: value}`` over the ok records that have ``key`` (paired comparisons)."""
        return {r["seed"]: r[key] for r in self.ok if r.get(key) is not None}

    def summary(self, key: str) -> Optional[Summary]:
        return summarize([r[key] for r in self.ok if r.get(key) is not None])

    def mean(self, key: str, default: float = math.nan) -> float:
        found = self.summary(key)
        return found.mean if found is not None else default


def group_rows(records: Sequence[Mapping]) -> list[RowGroup]:
    """Rows in order of first appearance (records are in run order: deterministic)."""
    groups: dict[tuple, RowGroup] = {}
    for record in records:
        key = (record["dataset"], record["backbone"], record["strategy"], record["weights"])
        if key not in groups:
            groups[key] = RowGroup(*key, records=[])
        groups[key].records.append(record)
    return list(groups.values())
