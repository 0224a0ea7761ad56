"""Which pictures a run has, chosen from its records alone (tlbench.report.plots draws them).

A pure function of the records: the same records give the same pictures, file names,
colors and BENCHMARKS.md links, so ``tlbench leaderboard --check`` can compare links
without drawing, and no plugin needs to be installed to draw a run's records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from tlbench.report.stats import RowGroup, group_rows
from tlbench.store.outputs import PLOT_DIR


@dataclass(frozen=True)
class Picture:
    """One PNG of a run: where it goes, what it shows, and the rows it draws."""

    dataset: str
    kind: str  # curves | tradeoff | confusion | confidence
    title: str  # alt text in BENCHMARKS.md
    filename: str  # relative to the run directory
    rows: tuple[RowGroup, ...] = field(compare=False)
    colors: dict = field(compare=False, default_factory=dict)  # row label -> color
    usual: str = "imagenet"  # the run's most common weights: other weights get labelled

    def label(self, row: RowGroup) -> str:
        """Strategy, plus the weights when they are not the run's usual (scratch: random),
        plus the settings that tell apart rows of the same names (``row.variant``)."""
        text = row.strategy if row.weights == self.usual else f"{row.strategy} [{row.weights}]"
        return f"{text} ({row.variant})" if row.variant else text


def pictures(records: Sequence[dict]) -> list[Picture]:
    """Every picture of a run, in BENCHMARKS.md order (per dataset)."""
    rows = [r for r in group_rows(records) if r.ok]
    weights = [r.weights for r in rows]
    usual = max(unique(weights), key=weights.count) if rows else "imagenet"
    colors = _colors([Picture("", "", "", "", (), usual=usual).label(r) for r in rows])
    found: list[Picture] = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        mine = [r for r in rows if r.dataset == dataset]
        for backbone in dict.fromkeys(r.backbone for r in mine):
            curved = tuple(r for r in mine if r.backbone == backbone and curves_of(r))
            if curved:
                found.append(
                    _picture(
                        dataset,
                        "curves",
                        f"learning curves, {backbone}",
                        curved,
                        colors,
                        usual,
                        backbone,
                    )
                )
        found.append(_picture(dataset, "tradeoff", "accuracy vs cost", tuple(mine), colors, usual))
        best = best_row(mine)
        if best is not None:
            found.append(
                _picture(
                    dataset, "confusion", "best cell: confusion and F1", (best,), colors, usual
                )
            )
        calibrated = tuple(r for r in by_accuracy(mine) if r.by_seed("ece"))
        if calibrated:
            found.append(
                _picture(
                    dataset, "confidence", "confidence and calibration", calibrated, colors, usual
                )
            )
    return found


def _picture(dataset, kind, title, rows, colors, usual, backbone=None) -> Picture:
    name = f"{dataset}-{kind}" + (f"-{backbone}" if backbone else "")
    filename = f"{PLOT_DIR}/{_safe(name)}.png"
    return Picture(dataset, kind, f"{dataset}: {title}", filename, tuple(rows), colors, usual)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _colors(labels: Sequence[str]) -> dict[str, object]:
    from matplotlib import colormaps

    labels = unique(labels)
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def curves_of(row: RowGroup) -> list:
    return [r["curve"] for r in row.ok if r.get("curve")]


def best_row(rows: Sequence[RowGroup]) -> Optional[RowGroup]:
    have = [r for r in rows if any("confusion" in x for x in r.ok)]
    return by_accuracy(have)[0] if have else None


def by_accuracy(rows: Sequence[RowGroup]) -> list[RowGroup]:
    """Highest mean final accuracy first; ties keep record order (stable sort)."""
    return sorted(rows, key=lambda r: -r.mean("final_accuracy", -1.0))


def unique(values) -> list:
    return list(dict.fromkeys(values))
