"""Which cells must run on the same worker: those that share work done once.

Within one process tlbench computes shared work once and reuses it (tlbench.run.runner):

- the backbone built from its weights (``Workspace.backbone``: per backbone and weights);
- the frozen-prefix feature cache (``Workspace.cache_key``: backbone, weights, resolution,
  dataset, sizes, and the seed where it changes the weights or the training subset);
- the ``--lr auto`` choice of a row (``Runner.remember_lr_choice``: the first seed searches,
  the later seeds of the row reuse its LR);
- a ``pretrain:<source>`` checkpoint (``tlbench.run.pretrain``: per backbone, source and
  settings, whatever the target dataset).

A *group* is the smallest set of cells closed under all four: (backbone, weights,
dataset), and (backbone, weights) for ``pretrain:`` weights, whose checkpoint serves
every target dataset.  A group runs in plan order on one worker, so a row's first seed
searches before the others, and the worker's runner stays warm across its cells.
"""

from __future__ import annotations

from tlbench.plan.settings import Cell


def group_key(cell: Cell) -> tuple:
    if cell.weights.startswith("pretrain:"):
        return (cell.backbone, cell.weights)
    return (cell.backbone, cell.weights, cell.dataset)


def group_cells(cells: list[Cell]) -> list[list[Cell]]:
    """The cells in groups, each in plan order; the largest groups first (cells of a
    group cannot run in parallel, so starting the long ones first shortens the run)."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(group_key(cell), []).append(cell)
    return sorted(groups.values(), key=len, reverse=True)


def group_rows(cells: list[Cell]) -> list[list[Cell]]:
    """Finer groups for large clusters: one per leaderboard row (its seeds share the LR
    choice), ``pretrain:`` cells still per checkpoint.  Strategies of one backbone and
    dataset then fill their frozen-prefix caches each on their own worker (README, "the
    scaling model": worth it beyond ~6 GPUs for the headline command).
    ``TLBENCH_RAY_GROUPING=row`` selects it."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        key = group_key(cell) if cell.weights.startswith("pretrain:") else (cell.row_hash,)
        groups.setdefault(key, []).append(cell)
    return sorted(groups.values(), key=len, reverse=True)


GROUPINGS = {"data": group_cells, "row": group_rows}


def per_cell(cells: list[Cell]) -> list[list[Cell]]:
    """Every cell its own group: what ignoring the sharing would do (for measuring it)."""
    return [[cell] for cell in cells]
