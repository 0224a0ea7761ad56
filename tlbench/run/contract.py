"""The plugin contract, checked before any training: one line per violation.

What a plugin hands tlbench is checked here, all at once, so a mistake that would
otherwise run "ok" at chance, silently train the wrong stage or crash deep inside torch
becomes one line naming the plugin, the item and what was expected, and the run does
not start (a :class:`ContractError`, exit 2).

- a dataset's loaded tensors: images ``uint8`` of shape ``[N, H, W]`` or
  ``[N, H, W, C]`` with ``C`` 1 or 3 (channels last); labels integer, 1-D, in
  ``[0, num_classes)``, as many as images; every class present in train;
  ``LoadedDataset.num_classes`` equal to the spec's;
- a strategy's plan for each backbone's stage count: a non-empty list of ``Phase``,
  stage indices in ``[-num_stages, num_stages)``, epoch fractions positive and summing
  to 1; any exception other than :class:`TlbenchError` (bad input, kept as it is) is a
  violation;
- a backbone's built model: a ``StagedModel`` whose stages pool to
  ``[B, num_features]`` (``tlbench.run.workspace.check_backbone``) and a ``weights_source``
  string that is not ImageNet's when the cell asked for other weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

import torch

from tlbench.api.errors import DataUnavailable, PluginError, TlbenchError
from tlbench.api.specs import StrategyRef

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.api.dataset import LoadedDataset
    from tlbench.api.model import StagedModel
    from tlbench.api.specs import DatasetSpec, StrategySpec
    from tlbench.plan.settings import Cell
    from tlbench.plugins.registry import Registry
    from tlbench.run.runner import Runner

FRACTION_TOLERANCE = 1e-6  # epoch fractions must sum to 1 within this


class ContractError(TlbenchError):
    """One or more plugins broke the contract; one line per violation, nothing ran."""

    def __init__(self, lines: list[str]):
        self.lines = list(dict.fromkeys(lines))
        count = len(self.lines)
        head = f"{count} plugin contract violation{'s' if count > 1 else ''}; nothing ran:"
        super().__init__("\n".join([head, *(f"  {line}" for line in self.lines)]))


@dataclass(frozen=True)
class Item:
    """Who a violation blames: ``dataset 'x' from plugin 'acme:data'``."""

    kind: str
    name: str
    plugin: str

    def says(self, what: str, expected: str) -> str:
        return (
            f"{self.kind} {self.name!r} from plugin {self.plugin!r}: {what}; expected {expected}."
        )


# ---------------------------------------------------------------- datasets


def dataset_violations(item: Item, spec: DatasetSpec, loaded: LoadedDataset) -> list[str]:
    """Every way ``loaded`` breaks the dataset contract (empty when it keeps it)."""
    lines: list[str] = []
    if loaded.num_classes != spec.num_classes:
        lines.append(
            item.says(
                f"load() returned num_classes={loaded.num_classes} but the spec says "
                f"{spec.num_classes}",
                "the same class count in DatasetSpec and LoadedDataset",
            )
        )
    per_split = {}
    for split in ("train", "test"):
        images = getattr(loaded, f"{split}_images")
        labels = getattr(loaded, f"{split}_labels")
        per_split[split] = _image_violations(item, split, images) + _label_violations(
            item, split, labels, images, spec.num_classes
        )
    if loaded.val_labels is not None:
        per_split["val"] = _image_violations(item, "val", loaded.val_images) + _label_violations(
            item, "val", loaded.val_labels, loaded.val_images, spec.num_classes
        )
    lines += per_split.pop("train")
    for split, found in per_split.items():  # the same mistake again is not another line
        lines += [t for t in found if _as_train(t, split) not in lines]
    if not lines:
        lines += _missing_classes(item, loaded.train_labels, spec.num_classes)
    return lines


def _as_train(line: str, split: str) -> str:
    return line.replace(f" {split} ", " train ")


def _image_violations(item: Item, split: str, images: object) -> list[str]:
    if not isinstance(images, torch.Tensor):
        return [item.says(f"{split} images are a {type(images).__name__}", "a torch.Tensor")]
    lines = []
    if images.dtype != torch.uint8:
        low, high = _value_range(images)
        lines.append(
            item.says(
                f"{split} images are {images.dtype} with values {low:.3g}..{high:.3g}",
                "uint8 in 0..255 (tlbench normalizes with the backbone's mean/std; "
                "images in 0..1 would train at chance)",
            )
        )
    shape = tuple(images.shape)
    channels_last = images.dim() == 4 and shape[-1] in (1, 3)
    if images.dim() != 3 and not channels_last:
        hint = " (channels first?)" if images.dim() == 4 and shape[1] in (1, 3) else ""
        lines.append(
            item.says(
                f"{split} images have shape {list(shape)}{hint}",
                "[N, H, W] or [N, H, W, C] with C 1 or 3 (channels last)",
            )
        )
    return lines


def _label_violations(
    item: Item, split: str, labels: object, images: object, num_classes: int
) -> list[str]:
    if not isinstance(labels, torch.Tensor):
        return [item.says(f"{split} labels are a {type(labels).__name__}", "a torch.Tensor")]
    lines = []
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        lines.append(
            item.says(
                f"{split} labels are {labels.dtype} of shape {list(labels.shape)}",
                "1-D integer class indices (int64)",
            )
        )
        return lines
    n_images = len(images) if isinstance(images, torch.Tensor) else None
    if n_images is not None and n_images != len(labels):
        lines.append(
            item.says(
                f"{n_images} {split} images but {len(labels)} {split} labels",
                "one label per image",
            )
        )
    if len(labels) == 0:
        lines.append(item.says(f"the {split} split is empty", "at least one image per class"))
    elif int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        lines.append(
            item.says(
                f"{split} labels span {int(labels.min())}..{int(labels.max())} with "
                f"num_classes={num_classes}",
                f"labels in 0..{num_classes - 1}",
            )
        )
    return lines


def _missing_classes(item: Item, labels: torch.Tensor, num_classes: int) -> list[str]:
    present = set(torch.unique(labels).tolist())
    missing = [c for c in range(num_classes) if c not in present]
    if not missing:
        return []
    shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
    return [
        item.says(
            f"classes {shown} of num_classes={num_classes} have no train image",
            "every class 0..num_classes-1 present in train (is num_classes right?)",
        )
    ]


def _value_range(images: torch.Tensor) -> tuple[float, float]:
    if images.numel() == 0 or images.dtype == torch.bool:
        return 0.0, 0.0
    values = images.detach().float()
    return float(values.min()), float(values.max())


# ---------------------------------------------------------------- strategies


def plan_violations(
    item: Item, spec: StrategySpec, arg: Optional[str], num_stages: int, epochs: int
) -> list[str]:
    """Every way the plan for a ``num_stages``-stage backbone breaks the contract."""
    from tlbench.api.specs import Phase

    call = f"plan({num_stages}, {arg!r})"
    try:
        phases = spec.phases(num_stages, arg, epochs)
    except TlbenchError:
        raise  # a bad argument: the plugin's own one-line message, exit 2
    except Exception as exc:  # noqa: BLE001 - a plugin bug, reported with its name
        return [
            item.says(
                f"{call} raised {type(exc).__name__}: {exc}",
                "a list of Phase (raise tlbench.api.errors.TlbenchError for a bad argument)",
            )
        ]
    if not isinstance(phases, list) or not phases or not all(isinstance(p, Phase) for p in phases):
        return [item.says(f"{call} returned {phases!r:.80}", "a non-empty list of Phase")]
    lines = [
        item.says(
            f"phase {phase.name!r} trains stage {index} of a {num_stages}-stage backbone",
            f"stage indices in {-num_stages}..{num_stages - 1}",
        )
        for phase in phases
        for index in phase.train_stages
        if not isinstance(index, int) or not -num_stages <= index < num_stages
    ]
    fractions = [p.epoch_fraction for p in phases]
    totals = (1.0, float(epochs)) if _takes_epochs(spec) else (1.0,)
    if any(f <= 0 for f in fractions) or all(
        abs(sum(fractions) - t) > FRACTION_TOLERANCE for t in totals
    ):
        budget = (
            f" or, as this plan takes epochs=, to the budget {epochs}" if len(totals) > 1 else ""
        )
        lines.append(
            item.says(
                f"{call} has epoch fractions {fractions} (sum {sum(fractions):g})",
                f"positive epoch fractions summing to 1 (each is a share of --epochs){budget}",
            )
        )
    return lines


def _takes_epochs(spec: StrategySpec) -> bool:
    import inspect

    try:
        return "epochs" in inspect.signature(spec.plan).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- backbones


def backbone_violations(item: Item, model: StagedModel, weights: str) -> list[str]:
    """What ``check_backbone`` does not cover: the record's ``weights_source``."""
    source = getattr(model, "weights_source", None)
    if not isinstance(source, str) or not source:
        return [
            item.says(
                f"build() returned a StagedModel without weights_source ({source!r})",
                "a string saying what the weights are: build with StagedModel.from_modules"
                "(..., weights=weights) or set model.weights_source = weights.label()",
            )
        ]
    if weights != "imagenet" and _claims_imagenet(source):
        return [
            item.says(
                f"built for weights {weights!r} but says weights_source={source!r}",
                "a weights_source that is not ImageNet's when other weights were asked for",
            )
        ]
    return []


def _claims_imagenet(source: str) -> bool:
    return source.split(":", 1)[0] in ("imagenet", "timm", "pypi")


# ---------------------------------------------------------------- a whole run


def check_cells(runner: Runner, cells: Iterable[Cell]) -> None:
    """Check every dataset, backbone and plan the cells use; raise one ContractError
    listing all violations.  Datasets come from the runner's (already loaded) cache and
    backbones are built once, as training would build them."""
    cells = list(cells)
    registry = runner.registry
    lines: list[str] = []
    for name in dict.fromkeys(c.dataset for c in cells):
        lines += _dataset_lines(runner, registry, name)
    stage_counts: dict[str, int] = {}
    for cell in cells:
        if cell.backbone in stage_counts or cell.weights.startswith("pretrain:"):
            continue
        model, problems = _built(runner, cell)
        lines += problems
        if model is not None:
            stage_counts[cell.backbone] = len(model.stages)
    for strategy, backbone, epochs in dict.fromkeys(
        (c.strategy, c.backbone, c.settings.epochs) for c in cells
    ):
        if backbone in stage_counts:
            lines += _plan_lines(registry, strategy, stage_counts[backbone], epochs)
    if lines:
        raise ContractError(lines)


def item_of(registry: Registry, kind: str, name: str) -> Item:
    from tlbench.plugins.registry import SINGULAR

    base = StrategyRef.parse(name).name if kind == "strategies" else name
    return Item(SINGULAR[kind], base, registry.plugin_of(kind, name))


def _dataset_lines(runner: Runner, registry: Registry, name: str) -> list[str]:
    try:
        loaded = runner.workspace.loaded(name)
    except DataUnavailable:
        return []  # its cells are skipped with the reason
    spec = registry.get("datasets", name)
    return dataset_violations(item_of(registry, "datasets", name), spec, loaded)


def _built(runner: Runner, cell: Cell) -> tuple[Optional[StagedModel], list[str]]:
    from tlbench.backbones.weights import WeightsUnavailable

    item = item_of(runner.registry, "backbones", cell.backbone)
    try:
        model = runner.workspace.backbone(cell)  # cached: training reuses this build
    except PluginError as exc:
        return None, [str(exc)]
    except (WeightsUnavailable, DataUnavailable):
        return None, []  # the cells are skipped with the reason
    except TlbenchError:
        raise
    except Exception:  # noqa: BLE001 - a crash in build: its cells record the traceback
        return None, []
    return model, backbone_violations(item, model, cell.weights)


def _plan_lines(registry: Registry, strategy: str, num_stages: int, epochs: int) -> list[str]:
    ref = StrategyRef.parse(strategy)
    spec = registry.get("strategies", ref.name)
    ref.split()  # bad options: TlbenchError, as before
    item = item_of(registry, "strategies", ref.name)
    return plan_violations(item, spec, ref.arg, num_stages, epochs)
