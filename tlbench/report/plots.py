"""The pictures of a run, rendered from its records by ``tlbench leaderboard``.

Each picture is a pure function of the records (which pictures: tlbench.report.pictures):
the same records give the same drawing (matplotlib's defaults are reset for every figure,
so a user's matplotlibrc changes nothing), class names included, which the records carry.
Figures are drawn with the object API on the Agg canvas: no pyplot state, no display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from tlbench.report.pictures import Picture, by_accuracy, curves_of, pictures, unique
from tlbench.report.stats import RowGroup
from tlbench.store.safeio import atomic_write

DPI = 110
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def render_all(directory: Path, records: Sequence[dict]) -> list[Path]:
    """Write every picture of the run in ``directory``; returns the paths."""
    return [render(picture, directory) for picture in pictures(records)]


def render(picture: Picture, directory: Path) -> Path:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = directory / picture.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(STYLE)
        fig = Figure(figsize=_size(picture), layout="constrained")
        FigureCanvasAgg(fig)
        DRAW[picture.kind](fig, picture)
        # rendered in memory, then replaced whole: never a truncated PNG
        atomic_write(
            path,
            lambda handle: fig.savefig(handle, format="png", dpi=DPI, metadata={"Software": None}),
        )
    return path


# ---------------------------------------------------------------- the four pictures


def draw_curves(fig, picture: Picture) -> None:
    """Validation accuracy vs epoch, one line per strategy (mean over seeds, min-max band)."""
    import numpy as np

    ax = fig.add_subplot()
    rows = by_accuracy(list(picture.rows))
    low = 100.0
    for row in rows:
        curves = curves_of(row)
        n = min(len(c) for c in curves)
        xs = [p[0] for p in curves[0][:n]]
        ys = np.array([[p[1] for p in c[:n]] for c in curves])
        color = picture.colors[picture.label(row)]
        seeds = f" (n={len(curves)})" if len({len(r.ok) for r in rows}) > 1 else ""
        ax.plot(
            xs, ys.mean(0), marker=".", ms=4, lw=1.4, color=color, label=picture.label(row) + seeds
        )
        if len(curves) > 1:
            ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=0.15, lw=0)
        low = min(low, float(ys.min()))
    threshold = float(rows[0].ok[0].get("threshold", 95.0))
    budget = max(r.get("epoch_budget", 1) for row in rows for r in row.ok)
    # in the legend, not as text on the plot: curves end near the threshold line
    ax.axhline(threshold, ls="--", lw=1, color="0.35", label=f"{threshold:g}% threshold")
    ax.set_xlim(0, budget)
    ax.set_ylim(max(0.0, math.floor(min(low, threshold) / 5) * 5 - 2), 100.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(
        f"{picture.dataset}, {rows[0].backbone}: validation accuracy during training"
        + (f"\nmean of {_seeds(rows)} seeds, band: min–max" if _seeds(rows) > 1 else "")
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def draw_tradeoff(fig, picture: Picture) -> None:
    """Final accuracy vs trainable parameters and vs train throughput; Pareto fronts."""
    axes = fig.subplots(1, 2, sharey=True)
    rows = list(picture.rows)
    markers = {
        b: MARKERS[i % len(MARKERS)] for i, b in enumerate(unique(r.backbone for r in rows))
    }
    panels = (
        (axes[0], "trainable_params", True, "trainable parameters (log scale)"),
        (axes[1], "train_throughput", False, "training throughput, images/s (log scale)"),
    )
    for ax, key, lower_is_better, xlabel in panels:
        points = []
        for row in rows:
            x, acc = row.mean(key), row.summary("final_accuracy")
            if acc is None or not x > 0:
                continue
            points.append((x, acc.mean))
            ax.errorbar(
                x,
                acc.mean,
                yerr=acc.std if acc.n > 1 else None,
                fmt=markers[row.backbone],
                ms=7,
                color=picture.colors[picture.label(row)],
                ecolor="0.6",
                capsize=2,
                zorder=3,
            )
        front = pareto_front(points, lower_is_better)
        if front:
            fx, fy = zip(*sorted(front), strict=True)
            ax.plot(fx, fy, ls="--", lw=1, color="black", zorder=2)
            ax.scatter(fx, fy, s=190, facecolors="none", edgecolors="black", lw=1.2, zorder=4)
        _log_axis(ax)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("final test accuracy (%)")
    fig.suptitle(
        f"{picture.dataset}: accuracy vs cost, one point per cell (mean over seeds); "
        "circled + dashed: Pareto front"
    )
    fig.legend(
        handles=_legend_handles(picture, markers),
        loc="outside lower center",
        ncol=min(5, len(picture.colors) + len(markers)),
        frameon=False,
    )


def draw_confusion(fig, picture: Picture) -> None:
    """Row-normalized confusion matrix (summed over seeds) and per-class F1 of one cell."""
    import numpy as np

    row = picture.rows[0]
    cm = sum(np.array(r["confusion"], dtype=float) for r in row.ok if "confusion" in r)
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    names = class_names(row.ok, len(cm))
    left, right = fig.subplots(1, 2, width_ratios=[1.45, 1])
    image = left.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(cm) <= 15:
        for i in range(len(cm)):
            for j in range(len(cm)):
                if norm[i, j] >= 0.005:
                    left.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ticks = range(len(cm))
    left.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor")
    left.set_yticks(ticks, names)
    left.set_xlabel("predicted class")
    left.set_ylabel("true class")
    left.set_title("confusion matrix (rows sum to 1)")
    fig.colorbar(image, ax=left, shrink=0.8)
    f1 = np.mean([r["per_class"]["f1"] for r in row.ok if "per_class" in r], axis=0)
    right.barh(ticks, f1, color=picture.colors[picture.label(row)])
    for i, value in enumerate(f1):
        right.text(min(value, 1.0) + 0.01, i, f"{value:.2f}", va="center", fontsize=7)
    right.set_yticks(ticks, names)
    right.invert_yaxis()
    right.set_xlim(0, 1.12)
    right.set_xlabel("F1 on test")
    right.set_title("per-class F1")
    acc = row.summary("final_accuracy")
    fig.suptitle(
        f"{picture.dataset}: best cell {row.backbone} · {row.strategy} "
        f"[{row.weights}], test accuracy {acc.mean:.2f}% "
        f"({acc.n} seed{'s' if acc.n > 1 else ''})"
    )


def draw_confidence(fig, picture: Picture) -> None:
    """Mean max-softmax on correct vs wrong test predictions, and the ECE, per row."""
    import numpy as np

    rows = list(picture.rows)
    labels = [f"{_long_label(picture, r)} ({r.mean('final_accuracy'):.1f}%)" for r in rows]
    y = np.arange(len(rows))
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=[1.4, 1])
    correct = [_mean_or_nan(r, "confidence_correct") for r in rows]
    wrong = [_mean_or_nan(r, "confidence_wrong") for r in rows]
    left.barh(y - 0.2, correct, height=0.4, color="#2a9d8f", label="correct predictions")
    left.barh(y + 0.2, wrong, height=0.4, color="#e76f51", label="wrong predictions")
    for i, value in enumerate(wrong):
        if math.isnan(value):
            left.text(0.01, i + 0.2, "no wrong predictions", va="center", fontsize=7)
    left.set_yticks(y, labels)
    left.invert_yaxis()
    left.set_xlim(0, 1)
    left.set_xlabel("mean max-softmax probability")
    left.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ece = [100 * _mean_or_nan(r, "ece") for r in rows]
    right.barh(y, ece, height=0.6, color="0.45")
    top = max([e for e in ece if not math.isnan(e)] + [1.0])
    for i, value in enumerate(ece):
        right.text(value + top * 0.02, i, f"{value:.1f}", va="center", fontsize=7)
    right.set_xlim(0, top * 1.18)
    right.set_xlabel("expected calibration error (%), 15 bins")
    right.set_title("calibration (lower is better)")
    fig.suptitle(f"{picture.dataset}: confidence on test (mean over seeds); rows by test accuracy")


DRAW: dict[str, Callable] = {
    "curves": draw_curves,
    "tradeoff": draw_tradeoff,
    "confusion": draw_confusion,
    "confidence": draw_confidence,
}


# ---------------------------------------------------------------- helpers


def pareto_front(points: Sequence[tuple[float, float]], lower_x_is_better: bool) -> list:
    """Points no other point beats on both axes (accuracy always higher-is-better)."""
    ordered = sorted(set(points), key=lambda p: (p[0] if lower_x_is_better else -p[0], -p[1]))
    front, best = [], -math.inf
    for x, y in ordered:
        if y > best:
            front.append((x, y))
            best = y
    return front


def class_names(records: Sequence[dict], count: int) -> tuple[str, ...]:
    """The class names the records carry (``class_names``, label order), else 0..count-1:
    records written before they carried names draw with class indices."""
    for record in records:
        names = record.get("class_names")
        if isinstance(names, list) and len(names) == count:
            return tuple(str(name) for name in names)
    return tuple(str(i) for i in range(count))


def _long_label(picture: Picture, row: RowGroup) -> str:
    many = len({r.backbone for r in picture.rows}) > 1
    return f"{row.backbone} · {picture.label(row)}" if many else picture.label(row)


def _legend_handles(picture: Picture, markers: dict) -> list:
    from matplotlib.lines import Line2D

    shown = unique(picture.label(r) for r in picture.rows)
    colors = picture.colors
    handles = [Line2D([], [], ls="", marker="o", color=colors[s], label=s) for s in shown]
    if len(markers) > 1:
        handles += [
            Line2D([], [], ls="", marker=m, color="0.3", label=b) for b, m in markers.items()
        ]
    return handles


def _mean_or_nan(row: RowGroup, key: str) -> float:
    return row.mean(key, math.nan)


def _log_axis(ax) -> None:
    """Log x axis labelled at 1-2-5 steps in plain units (170, 2k, 4.6M): readable even
    when the data span less than a decade, where matplotlib's defaults crowd or vanish."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: human(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def human(value: float) -> str:
    """170, 2k, 4.6M: short tick labels."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _seeds(rows: Sequence[RowGroup]) -> int:
    return max(len(r.ok) for r in rows)


def _size(picture: Picture) -> tuple[float, float]:
    n = len(picture.rows)
    if picture.kind == "curves":
        return (8.5, 4.6)
    if picture.kind == "tradeoff":
        return (10.0, 5.0)
    if picture.kind == "confusion":
        return (10.5, 5.0)
    return (9.5, max(2.8, 0.42 * n + 1.6))
