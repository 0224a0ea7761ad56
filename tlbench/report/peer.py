"""The "Peer validation" section of BENCHMARKS.md, from ``results/peer/*.json``.

``benchmarks/peer_validation.py`` trains one cell (same images, splits, weights,
resolution, epoch budget) with tlbench, fastai's ``fine_tune`` and a scikit-learn
logistic-regression probe, and writes one JSON file per dataset.  This module renders
them side by side, with the targets of issue 9 stated and checked.  It is a pure
function of those files: no training, no clock, no environment.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

PEER_DIR = "peer"
PROBE_TOLERANCE = 2.0  # points: tlbench linear_probe vs the logistic-regression probe

INTRO = (
    'Produced by `benchmarks/peer_validation.py` (README, "Peer validation"): one cell '
    "trained by other libraries on the same images, splits, weights, resolution, "
    "normalization and epoch budget as tlbench's own cells (those come from `tlbench run` "
    "with its default settings). Test accuracy in %, mean ± sample std over seeds. "
    "Targets: tlbench `linear_probe` within "
    f"{PROBE_TOLERANCE:g} points of the logistic-regression probe (or above it); tlbench "
    "`two_stage` ≥ fastai `fine_tune` and ≥ tlbench `linear_probe`."
)


def peer_section(results_root: str | Path) -> list[str]:
    """Markdown lines of the section; empty when there are no peer results."""
    folder = Path(results_root) / PEER_DIR
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return []
    lines = ["## Peer validation", "", INTRO, ""]
    for path in files:
        try:
            result = json.loads(path.read_text())
            lines += dataset_lines(result, path.name, longer_probes(results_root, result))
        except (ValueError, KeyError, TypeError) as exc:
            lines += [f"`{path.name}`: unreadable ({type(exc).__name__}: {exc}).", ""]
    return lines


def longer_probes(results_root: str | Path, result: dict) -> dict[int, list[float]]:
    """Test accuracies of tlbench ``linear_probe`` cells recorded under ``results_root``
    that match the peer cell in everything but a longer epoch budget, by budget: they
    show whether a miss of the probe target is the budget (an Adam head needs more steps
    than the cell gives it) or the features."""
    from tlbench.store.records import discover_runs, load_records

    s = result["settings"]
    found: dict[int, list[float]] = {}
    for run in discover_runs(results_root):
        for r in load_records(run):
            config = r.get("config") or {}
            same = (
                r.get("status") == "ok"
                and r.get("strategy") == "linear_probe"
                and r.get("dataset") == result["dataset"]
                and r.get("backbone") == result["backbone"]
                and r.get("weights") == result["weights"]
                and r.get("resolution") == s["resolution"]
                and config.get("train_size") == s["train_size"]
                and config.get("lr") == "auto"
                and isinstance(config.get("epochs"), int)
                and config["epochs"] > s["epochs"]
            )
            if same and r.get("seed") in s["seeds"]:
                found.setdefault(config["epochs"], []).append(r["final_accuracy"])
    return dict(sorted(found.items()))


def dataset_lines(result: dict, name: str, longer: Optional[dict] = None) -> list[str]:
    s = result["settings"]
    sizes = s.get("split_sizes") or {}
    title = (
        f"### {result['dataset']}: {result['backbone']} ({result['weights']}), {s['resolution']} px"
    )
    facts = (
        f"Train {sizes.get('train', s['train_size'])} / val {sizes.get('val', s['val_size'])}"
        f" / test {sizes.get('test', s['test_size'])}, {s['epochs']} epochs, batch "
        f"{s['batch_size']}, seeds {', '.join(str(x) for x in s['seeds'])}, {s['device']}; "
        f"data {s.get('data_source', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(result.get("versions", {}).items()))
        + f" (`results/{PEER_DIR}/{name}`)."
    )
    rows = method_rows(result)
    for epochs, acc in (longer or {}).items():
        reference = list(result["logreg"]["test_accuracy"])
        rows.append(
            {
                "method": f"tlbench `linear_probe`, {epochs} epochs",
                "acc": acc,
                "settings": f"the same cells with `--epochs {epochs}` (records under results/)",
                "target": "is the miss the budget? (same target)",
                "met": _verdict(acc, reference, -PROBE_TOLERANCE),
            }
        )
    table = [
        "| method | test acc % ↑ | seeds | settings | target | met? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        table.append(
            f"| {row['method']} | {fmt(row['acc'])} | {len(row['acc'])} | {row['settings']} "
            f"| {row['target']} | {row['met']} |"
        )
    return [title, "", facts, "", *table, ""]


def method_rows(result: dict) -> list[dict]:
    """One row per method, targets checked on the means over seeds."""
    logreg, fast = result["logreg"], result["fastai"]
    tl = result["tlbench"]["strategies"]
    lr_acc = list(logreg["test_accuracy"])
    fa_acc = list(fast["test_accuracy"])
    lp = list(tl.get("linear_probe", {}).get("test_accuracy", []))
    ts = list(tl.get("two_stage", {}).get("test_accuracy", []))
    chosen = sorted({r["chosen_C"] for r in logreg.get("per_seed", [])})
    grid = logreg.get("C_grid", [])
    rows = [
        {
            "method": "scikit-learn logistic regression (L-BFGS) on frozen features",
            "acc": lr_acc,
            "settings": (
                f"C chosen on val from {len(grid)} values "
                f"{_g(min(grid)) if grid else '?'}..{_g(max(grid)) if grid else '?'}: "
                f"C = {', '.join(_g(c) for c in chosen)}; features "
                f"{'standardized' if logreg.get('standardize') else 'raw (not standardized)'}"
            ),
            "target": "reference for linear_probe",
            "met": "–",
        },
        {
            "method": "fastai `fine_tune`",
            "acc": fa_acc,
            "settings": (
                f"{fast.get('recipe', 'fine_tune')}, base_lr "
                f"{', '.join(_g(x) for x in fast.get('base_lr', []))}"
                f"{' (lr_find)' if fast.get('lr_find') else ''}; fastai defaults, train_bn=True"
            ),
            "target": "reference for two_stage",
            "met": "–",
        },
    ]
    for strategy in ("linear_probe", "full", "two_stage"):
        entry = tl.get(strategy)
        if entry is None:
            continue
        acc = list(entry["test_accuracy"])
        target, met = "–", "–"
        if strategy == "linear_probe":
            target = f"≥ logistic regression − {PROBE_TOLERANCE:g} ({_m(lr_acc, -PROBE_TOLERANCE)})"
            met = _verdict(acc, lr_acc, -PROBE_TOLERANCE)
        elif strategy == "two_stage":
            target = f"≥ fastai fine_tune ({_m(fa_acc)}) and ≥ linear_probe ({_m(lp)})"
            a, b = _verdict(ts, fa_acc), _verdict(ts, lp)
            met = "met" if a == b == "met" else _both(a, b)
        hashes = ", ".join(f"`{h}`" for h in entry.get("config_hash", []))
        rows.append(
            {
                "method": f"tlbench `{strategy}`",
                "acc": acc,
                "settings": f"`tlbench run` defaults, {_lr_text(entry)}; config {hashes}",
                "target": target,
                "met": met,
            }
        )
    return rows


def _lr_text(entry: dict) -> str:
    values = []
    for info in entry.get("lr", []):
        chosen = next((v for k, v in sorted(info.items()) if "chosen" in k and v is not None), None)
        values.append(chosen if chosen is not None else info.get("config_lr"))
    unique = list(dict.fromkeys(_g(v) if isinstance(v, (int, float)) else str(v) for v in values))
    return f"lr {', '.join(unique)}" if unique else "lr ?"


def _verdict(values: list[float], reference: list[float], offset: float = 0.0) -> str:
    if not values or not reference:
        return "no data"
    return "met" if mean(values) >= mean(reference) + offset else "missed"


def _both(a: str, b: str) -> str:
    if "no data" in (a, b):
        return "no data"
    return f"missed (vs fastai: {a}, vs linear_probe: {b})"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def std(values: list[float]) -> Optional[float]:
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    s = std(values)
    return f"{mean(values):.2f}" if s is None else f"{mean(values):.2f} ± {s:.2f}"


def _m(values: list[float], offset: float = 0.0) -> str:
    return f"{mean(values) + offset:.2f}" if values else "–"


def _g(value: float) -> str:
    return f"{value:.3g}"
