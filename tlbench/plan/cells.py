"""Expands the CLI's choices into the ordered list of cells to run."""

from __future__ import annotations

from dataclasses import dataclass

from tlbench.api.specs import StrategyRef
from tlbench.backbones.weights import weights_for
from tlbench.plan.settings import Cell, Settings
from tlbench.plugins.registry import Registry

REFERENCE = ("scratch", "random")  # the from-scratch row: strategy, weights


@dataclass(frozen=True)
class Choices:
    backbones: list[str]
    strategies: list[str]
    datasets: list[str]
    seeds: list[int]
    weights: str | dict[str, str]  # a label, or per backbone ("" = the rest)
    thresholds: dict[str, float]
    reference: bool  # add a from-scratch (``scratch``: random init, all train) row


def expand(choices: Choices, settings: Settings, registry: Registry) -> list[Cell]:
    """Cross-product dataset x backbone x strategy x seed, plus the reference rows."""
    cells: list[Cell] = []
    per_backbone = choices.weights if isinstance(choices.weights, dict) else {}
    for name in per_backbone:
        if name:  # --weights NAME=...: NAME must be a backbone of this run
            registry.get("backbones", name)
    for backbone in choices.backbones:
        weights = weights_for(choices.weights, backbone)
        if weights.startswith("pretrain:"):  # the source must be a registered dataset
            registry.get("datasets", weights.split(":", 1)[1])
    for dataset in choices.datasets:
        for backbone in choices.backbones:
            spec = registry.get("backbones", backbone)
            weights = weights_for(choices.weights, backbone)
            resolution = settings.resolution or spec.input_size
            rows = [
                (canonical_strategy(s, registry), registry.get("strategies", s).weights)
                for s in choices.strategies
            ]
            rows = [(s, forced or weights) for s, forced in rows]
            if choices.reference and weights != REFERENCE[1]:
                rows.append(REFERENCE)
            for strategy, weights in dict.fromkeys(rows):
                for seed in choices.seeds:
                    cells.append(
                        Cell(
                            backbone,
                            strategy,
                            dataset,
                            seed,
                            weights,
                            resolution,
                            choices.thresholds[dataset],
                            settings,
                        )
                    )
    return cells


def canonical_strategy(text: str, registry: Registry) -> str:
    """``partial`` -> ``partial:2`` (its documented default), options sorted after it
    (``partial:bn=frozen`` -> ``partial:2,bn=frozen``), so equal cells hash equal."""
    ref = StrategyRef.parse(text)
    spec = registry.get("strategies", ref.name)
    positional, options = ref.split()
    positional = positional if positional is not None else spec.default_arg
    parts = [positional] if positional is not None else []
    parts += [f"{key}={value}" for key, value in sorted(options.items())]
    return str(StrategyRef(ref.name, ",".join(parts) or None))
