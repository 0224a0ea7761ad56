"""The header of a run's BENCHMARKS.md section: what every row of the run shares
(device, settings, splits, data and weights sources, versions), read from its records.

Kept apart from the tables (tlbench.report.leaderboard) because it describes the run,
not its rows: each line says what ran, including where it differs from what was asked.
"""

from __future__ import annotations

from typing import Iterable

from tlbench.report import markdown as md
from tlbench.store.records import Record


def run_header(records: list[Record]) -> list[str]:
    """The bullet lines under a run's heading, from its ok records (all, if none is ok)."""
    ok = [r for r in records if r.get("status") == "ok"] or records
    config = ok[0]["config"]
    sizes = unique(
        f"{md.text(r['dataset'])}: train {r['split_sizes']['train']} / val "
        f"{r['split_sizes']['val']} / test {r['split_sizes']['test']}"
        for r in ok
        if "split_sizes" in r
    )
    sources = unique(
        f"{md.text(r['dataset'])}: {md.text(r['data_source'])}" for r in ok if "data_source" in r
    )
    weights = unique(
        f"{md.text(r['backbone'])} ({md.text(r['weights'])}): {md.text(r['weights_source'])}"
        for r in ok
        if "weights_source" in r
    )
    versions = ok[0].get("versions", {})
    lines = [
        f"- Device: {', '.join(unique(md.text(r['device']) for r in ok))}",
        f"- Settings: {config['epochs']} epochs, batch {config['batch_size']}, Adam lr "
        f"{_lr_setting(config['lr'], ok)}, "
        f"resolution {unique_join(r['resolution'] for r in ok)} px, "
        f"{_evals_setting(config['evals_per_epoch'], ok)} validation evaluations per epoch, seeds "
        f"{unique_join(r['seed'] for r in ok)}",
        f"- Splits: {'; '.join(sizes)}",
        f"- Data sources: {'; '.join(sources)}",
        f"- Weights: {'; '.join(weights)}",
    ]
    pretrained = unique(
        f"{md.text(r['backbone'])} on {md.text(r['pretrain_source'])}: "
        f"{r['pretrain_source_accuracy']:.2f}% "
        "source test accuracy"
        for r in ok
        if "pretrain_source" in r
    )
    if pretrained:
        lines.append(
            "- Source pretraining (`full` from random init, same settings): "
            + "; ".join(pretrained)
        )
    lines.append(
        "- Versions: "
        + ", ".join(f"{md.text(k)} {md.text(v)}" for k, v in sorted(versions.items()))
    )
    return lines


def _lr_setting(lr, ok: list[dict]) -> str:
    if lr != "auto":
        return str(lr)
    by_rule: dict[str, set] = {}
    for r in ok:
        rule = (r["config"].get("lr_search") or {}).get("halving", "off")
        by_rule.setdefault(rule, set()).add(r["strategy"])
    common = max(by_rule, key=lambda rule: (len(by_rule[rule]), rule), default="off")
    rules = [
        _lr_rule(rule)
        + ("" if rule == common else f" for {md.text(', '.join(sorted(by_rule[rule])))}")
        for rule in sorted(by_rule, key=lambda rule: rule != common)
    ]
    if len(rules) > 1:
        rules[0] += " for the others"
    return f"auto (each strategy's grid, chosen on validation: LR column; {'; '.join(rules)})"


def _lr_rule(rule: str) -> str:
    if rule == "off":
        return "every candidate to the full budget"
    return rule.replace("eta=", "successive halving eta=")


def _evals_setting(requested: int, ok: list[dict]) -> str:
    """The validation points per epoch that ran (from the curves), and what was asked when
    fewer ran: an epoch of fewer training steps than ``--evals-per-epoch`` caps them."""
    ran = unique(
        round(len(r["curve"]) / r["epoch_budget"], 2)
        for r in ok
        if r.get("curve") and r.get("epoch_budget")
    )
    shown = ", ".join(f"{float(v):g}" for v in ran)
    if not ran or ran == [str(float(requested))]:
        return str(requested)
    return f"{shown} ({requested} asked; capped at one per training step)"


def unique(values: Iterable) -> list[str]:
    """Each distinct value once, as text, in first-seen order."""
    return [str(v) for v in dict.fromkeys(values)]


def unique_join(values: Iterable) -> str:
    return ", ".join(unique(values))
