"""``--lr auto``: each strategy's learning rate, chosen on validation, never on test.

Protocols the field trusts (VTAB, the CLIP linear-probe protocol) choose a method's
hyperparameters on validation data.  Here each strategy declares a small grid
(:attr:`tlbench.specs.StrategySpec.lr_grid`); the first seed of a row (one
configuration, seeds aside) trains every candidate with the cell's full budget and
keeps the one with the best final validation accuracy, whose test pass is that cell's
result.  The other seeds of the row reuse the chosen LR, so a row pays for its grid
once; cells sharing a frozen prefix share its cached features, which makes the grid
nearly free for heads on frozen features.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

from tlbench.records import row_hash

SELECTED_ON = "final validation accuracy (ties: best validation accuracy, then smaller LR)"


@dataclass
class Candidate:
    lr: float
    status: str  # ok | diverged
    val_accuracy: Optional[float]  # percent, final model, validation split
    best_val_accuracy: Optional[float]  # percent, best evaluation point
    seconds: float  # model copy + training + validation of this candidate

    def rank(self) -> tuple:
        return (self.val_accuracy, self.best_val_accuracy, -self.lr)


@dataclass
class SearchResult:
    grid: list[float]
    candidates: list[Candidate] = field(default_factory=list)
    seed: int = 0  # the seed whose cell ran the search
    chosen: Optional[float] = None

    @property
    def seconds(self) -> float:
        return round(sum(c.seconds for c in self.candidates), 3)

    def to_record(self) -> dict:
        return {
            "grid": self.grid,
            "candidates": [asdict(c) for c in self.candidates],
            "chosen": self.chosen,
            "seed": self.seed,
            "selected_on": SELECTED_ON,
            "seconds": self.seconds,
        }

    @classmethod
    def from_record(cls, data: dict) -> SearchResult:
        candidates = [Candidate(**c) for c in data.get("candidates", [])]
        return cls(list(data["grid"]), candidates, int(data["seed"]), data.get("chosen"))


def search(
    grid: Sequence[float],
    seed: int,
    train: Callable[[float], object],
    diverged: type[BaseException],
):
    """Train a candidate per LR with ``train(lr)`` (returns a trained, untested trainer
    whose ``curve`` holds its validation points); keep the best on validation.

    Returns ``(best trainer, SearchResult)``; the losers are dropped as soon as they are
    beaten, so at most two models live at once.  If every candidate diverges, the last
    divergence is raised.
    """
    result = SearchResult(list(grid), seed=seed)
    best, best_candidate, last_divergence = None, None, None
    for lr in grid:
        t0 = time.perf_counter()
        try:
            trainer = train(lr)
        except diverged as exc:
            seconds = round(time.perf_counter() - t0, 3)
            result.candidates.append(Candidate(lr, "diverged", None, None, seconds))
            last_divergence = exc
            continue
        accuracies = [a for _, a in trainer.curve]
        seconds = round(time.perf_counter() - t0, 3)
        candidate = Candidate(lr, "ok", accuracies[-1], max(accuracies), seconds)
        result.candidates.append(candidate)
        if best_candidate is None or candidate.rank() > best_candidate.rank():
            best, best_candidate = trainer, candidate
    if best_candidate is None:
        raise last_divergence  # every candidate diverged: so does the cell
    result.chosen = best_candidate.lr
    return best, result


def searches_in(records: list[dict]) -> dict[str, SearchResult]:
    """The searches recorded by the cells that ran them, by row key: a later run of the
    same row (more seeds, a resumed run) reuses the choice instead of searching again."""
    found = {}
    for record in records:
        data = record.get("lr_search")
        if record.get("status") != "ok" or not isinstance(data, dict):
            continue
        if data.get("seed") == record.get("seed") and isinstance(record.get("config"), dict):
            try:
                found[row_hash(record["config"])] = SearchResult.from_record(data)
            except (KeyError, TypeError, ValueError):
                continue  # a malformed search is searched again, never trusted
    return found
