"""``--lr auto``: each strategy's learning rate, chosen on validation, never on test.

Protocols the field trusts (VTAB, the CLIP linear-probe protocol) choose a method's
hyperparameters on validation data.  Here each strategy declares a small grid
(:attr:`tlbench.api.specs.StrategySpec.lr_grid`); the first seed of a row (one
configuration, seeds aside) trains the candidates and keeps the one with the best final
validation accuracy, whose test pass is that cell's result.

Expensive strategies (``StrategySpec.lr_halving``, grids of 3 or more) are searched by
successive halving (Jamieson & Talwalkar 2016; Hyperband's inner loop) with eta = 3,
Hyperband's default: every candidate trains to the validation point nearest a third of
the budget, the best third (at least one) continue to the full budget from where they
stopped, the rest are recorded as ``pruned``.  A 3-LR grid then costs 5/3 budgets
instead of 3.  A survivor's
training is exactly the training a lone run would do (tlbench.train.loop is resumable).

The other seeds of the row reuse the chosen LR, so a row pays for its grid once; cells
sharing a frozen prefix share its cached features, which makes the grid nearly free for
heads on frozen features.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

from tlbench.store.records import row_hash

SELECTED_ON = "final validation accuracy (ties: best validation accuracy, then smaller LR)"
HALVING_ETA = 3  # rank at 1/eta of the budget, keep the best 1/eta of the candidates
PRUNED_ON = "validation accuracy at the rung (ties: best so far, then smaller LR)"


def protocol(spec, allowed: bool = True) -> dict:
    """How ``--lr auto`` searches a strategy: part of a cell's config (and hash), since a
    different grid or pruning rule can choose a different LR.  ``allowed=False``
    (``--no-lr-halving``) trains every candidate to the full budget."""
    grid = [float(lr) for lr in spec.lr_grid]
    halving = allowed and getattr(spec, "lr_halving", True) and len(grid) >= 3
    rule = f"eta={HALVING_ETA} at 1/{HALVING_ETA} budget"
    return {"grid": grid, "halving": rule if halving else "off"}


@dataclass
class Candidate:
    lr: float
    status: str  # ok | diverged | pruned
    val_accuracy: Optional[float]  # percent, final model, validation split (None: pruned)
    best_val_accuracy: Optional[float]  # percent, best evaluation point it reached
    seconds: float  # model copy + training + validation of this candidate
    rung_val_accuracy: Optional[float] = None  # percent, at the halving point (if halving)
    epochs_trained: Optional[float] = None  # where it stopped (pruned: the halving point)

    def rank(self) -> tuple:
        return (self.val_accuracy, self.best_val_accuracy, -self.lr)

    def rung_rank(self) -> tuple:
        return (self.rung_val_accuracy, self.best_val_accuracy, -self.lr)


@dataclass
class SearchResult:
    grid: list[float]
    candidates: list[Candidate] = field(default_factory=list)
    seed: int = 0  # the seed whose cell ran the search
    chosen: Optional[float] = None
    halving: Optional[dict] = None  # {"eta", "rung_epochs", "kept"} when candidates were pruned

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
            "halving": {**self.halving, "pruned_on": PRUNED_ON} if self.halving else None,
            "seconds": self.seconds,
        }

    @classmethod
    def from_record(cls, data: dict) -> SearchResult:
        candidates = [Candidate(**c) for c in data.get("candidates", [])]
        halving = data.get("halving")
        return cls(list(data["grid"]), candidates, int(data["seed"]), data.get("chosen"), halving)


def search(
    grid: Sequence[float],
    seed: int,
    start: Callable[[float], object],
    diverged: type[BaseException],
    halving: bool = True,
):
    """Search ``grid``: ``start(lr)`` gives an untrained trainer (tlbench.train.loop.CellTrainer:
    resumable ``train(until)``, ``curve`` of validation points); none is tested.

    Returns ``(best trainer, SearchResult)``.  Without halving, losers are dropped as soon
    as they are beaten (at most two models live); with it, at most ``kept + 1``.  If every
    candidate diverges, the last divergence is raised.
    """
    result = SearchResult(list(grid), seed=seed)
    rung, kept = None, len(grid)
    if halving and len(grid) >= 3:
        kept = max(1, len(grid) // HALVING_ETA)
    alive: list[tuple[Candidate, object]] = []
    last_divergence = None
    for lr in grid:
        t0 = time.perf_counter()
        trainer = start(lr)
        if rung is None and kept < len(grid):
            rung = trainer.rung_eval_step(HALVING_ETA)
        candidate = Candidate(lr, "ok", None, None, 0.0)
        result.candidates.append(candidate)
        last_divergence = _advance(candidate, trainer, rung, diverged, t0) or last_divergence
        if candidate.status == "ok":
            alive = _keep_best(alive + [(candidate, trainer)], kept if rung else 1, rung)
    if rung is not None:
        result.halving = {"eta": HALVING_ETA, "rung_epochs": _epochs(alive, rung), "kept": kept}
        for candidate, trainer in alive:
            t0 = time.perf_counter()
            last_divergence = _advance(candidate, trainer, None, diverged, t0) or last_divergence
        alive = _keep_best([(c, t) for c, t in alive if c.status == "ok"], 1, None)
    if not alive:
        raise last_divergence  # every candidate diverged: so does the cell
    best_candidate, best = alive[0]
    result.chosen = best_candidate.lr
    return best, result


def _advance(candidate: Candidate, trainer, until: Optional[int], diverged, t0: float):
    """Train ``trainer`` to ``until`` (None: the end) and note it on ``candidate``;
    returns the divergence if it diverged."""
    try:
        accuracy = trainer.train(until)
    except diverged as exc:
        candidate.status = "diverged"
        return exc
    finally:
        candidate.seconds = round(candidate.seconds + time.perf_counter() - t0, 3)
        candidate.epochs_trained = round(trainer.steps_done / trainer.steps_per_epoch, 4)
    best = max(a for _, a in trainer.curve)
    candidate.best_val_accuracy = best
    if until is None:
        candidate.val_accuracy = accuracy
    else:
        candidate.rung_val_accuracy = accuracy
    return None


def _keep_best(alive: list, count: int, rung: Optional[int]) -> list:
    """The ``count`` best of ``alive`` (at the rung, or at the end); the rest are marked
    pruned (at the rung) and their models released."""
    key = (lambda pair: pair[0].rung_rank()) if rung else (lambda pair: pair[0].rank())
    ranked = sorted(alive, key=key, reverse=True)
    for candidate, _ in ranked[count:]:
        if rung:
            candidate.status = "pruned"
    return ranked[:count]


def _epochs(alive: list, rung: int) -> Optional[float]:
    return round(rung / alive[0][1].steps_per_epoch, 4) if alive else None


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
