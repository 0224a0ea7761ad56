"""What every cell draws on, built once per process: data, backbones, caches, and the
factories that make a cell's model, its training configuration and its trainer.

The runner, source pretraining (tlbench.run.pretrain) and ``tlbench bench`` share one
:class:`Workspace`, so a cell is built the same way wherever it runs and nothing reaches
into another module's private state.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Optional

import torch

from tlbench.api.dataset import LoadedDataset, Splits
from tlbench.api.errors import DataUnavailable, PluginError, TlbenchError
from tlbench.api.model import StagedModel
from tlbench.backbones.weights import WeightsChoice, WeightsUnavailable
from tlbench.data.preprocess import BatchAdapter, RandomShift
from tlbench.data.splits import make_splits
from tlbench.plan.settings import Cell
from tlbench.plugins.registry import Registry
from tlbench.run import pretrain
from tlbench.run.provenance import cell_provenance
from tlbench.train.autotune import Tuner
from tlbench.train.device import DeviceInfo
from tlbench.train.feature_cache import FeatureCache
from tlbench.train.loop import CellTrainer
from tlbench.train.modes import eval_mode
from tlbench.train.state import TrainConfig


class Workspace:
    """Caches (datasets, splits, built backbones, frozen-prefix features, layout and
    batch decisions) and the one place that turns a cell into a model and a trainer."""

    def __init__(
        self,
        registry: Registry,
        device: DeviceInfo,
        data_dir: Optional[str] = None,
        on_step: Optional[Callable[[int, int], None]] = None,
        compile_model: bool = False,
    ):
        self.registry, self.device, self.data_dir = registry, device, data_dir
        self.on_step = on_step
        self.compile_model = compile_model  # --compile: torch.compile each stage (not hashed)
        self.cache = FeatureCache(device.device)
        self.tuner = Tuner(device.device, device.channels_last)  # layouts, inference batches
        self._splits: dict[tuple, tuple[Splits, str]] = {}
        self._loaded: dict[str, LoadedDataset] = {}
        self._models: dict[tuple, StagedModel] = {}
        self._weights_info: dict[tuple, dict] = {}  # per built backbone: its record's words

    # ---- data -------------------------------------------------------------------------
    def loaded(self, dataset: str) -> LoadedDataset:
        """The dataset as loaded from its first usable source, once per workspace."""
        if dataset not in self._loaded:
            self._loaded[dataset] = self.registry.get("datasets", dataset).load(self.data_dir)
        return self._loaded[dataset]

    def splits_for(self, cell: Cell) -> tuple[Splits, str]:
        """The cell's splits: validation and test the same for every cell of the dataset,
        the training subsample drawn with the cell's seed (tlbench.data.splits)."""
        s = cell.settings
        key = self.split_key(cell)
        if key not in self._splits:
            loaded = self.loaded(cell.dataset)
            splits = make_splits(loaded, s.train_size, s.val_size, s.test_size, seed=key[-1])
            self._splits[key] = (splits.to(self.device.device), loaded.source)
        return self._splits[key]

    @staticmethod
    def split_key(cell: Cell) -> tuple:
        """Seeds share splits unless --train-size subsamples (then the subset is the seed's)."""
        s = cell.settings
        seed = cell.seed if s.train_size is not None else 0
        return (cell.dataset, s.train_size, s.val_size, s.test_size, seed)

    def prepare_data(self, cells: list[Cell]) -> None:
        """Load and split every dataset up front: bad data or sizes fail before training."""
        for cell in {self.split_key(c): c for c in cells}.values():
            self.splits_for(cell)

    def finalized(self, cell: Cell) -> Cell:
        """The cell with its provenance (data fingerprint, weights identity, plugin
        versions: tlbench.run.provenance), which completes its config_hash; a cell whose
        data is unavailable stays as it is (it is skipped)."""
        if cell.provenance is not None:
            return cell
        try:
            provenance = cell_provenance(cell, self.registry, self.loaded)
        except DataUnavailable:
            return cell
        return dataclasses.replace(cell, provenance=provenance)

    # ---- plugins ----------------------------------------------------------------------
    def dataset(self, cell: Cell):
        return self.registry.get("datasets", cell.dataset)

    def strategy(self, cell: Cell):
        return self.registry.get("strategies", cell.strategy_ref.name)

    def backbone_spec(self, cell: Cell):
        return self.registry.get("backbones", cell.backbone)

    # ---- models -----------------------------------------------------------------------
    def backbone(self, cell: Cell) -> StagedModel:
        """The backbone as built from its weights: once per weights (and seed if random)."""
        weights = WeightsChoice.parse(cell.weights)
        key = self._backbone_key(cell)
        if key not in self._models:
            torch.manual_seed(cell.seed)
            source_run: dict = {}
            if weights.kind == "pretrain":  # trained here on the source, or from the cache
                model, source_run = pretrain.pretrained_backbone(self, cell)
            else:
                model = self.backbone_spec(cell).build(weights)
            plugin = self.registry.plugin_of("backbones", cell.backbone)
            checked = check_backbone(model, cell.backbone, plugin, cell.resolution)
            source = getattr(checked, "weights_source", None)  # the contract check names it
            self._weights_info[key] = {"weights_source": source, **source_run}
            self._models[key] = checked
        return self._models[key]

    def weights_info(self, cell: Cell) -> dict:
        """Where the cell's weights came from (``weights_source``) and, for
        ``pretrain:<dataset>``, the source run's facts: what its record says of them."""
        self.backbone(cell)
        return dict(self._weights_info[self._backbone_key(cell)])

    @staticmethod
    def _backbone_key(cell: Cell) -> tuple:
        weights = WeightsChoice.parse(cell.weights)
        return (cell.backbone, cell.weights, cell.seed if weights.kind == "random" else None)

    def prepare_models(self, cells: list[Cell]) -> None:
        """Build each backbone once and check each strategy argument, before training.

        A bad ``name:arg``, or a ``--weights`` file that is not a state dict, that
        ``weights_only=True`` refuses or that does not fit the architecture, is bad input
        (a TlbenchError: exit 2), not one failed cell per cell.  A plugin bug is left for
        its cells to record (with a traceback); missing weights for them to skip.
        """
        groups: dict[tuple[str, str], list[Cell]] = {}
        for cell in cells:
            if not cell.weights.startswith("pretrain:"):  # source-training waits for its cell
                groups.setdefault((cell.backbone, cell.weights), []).append(cell)
        for group in groups.values():
            model = self._prepared_backbone(group[0])
            for ref in dict.fromkeys(c.strategy_ref for c in group) if model else ():
                spec = self.registry.get("strategies", ref.name)
                try:
                    spec.phases(len(model.stages), ref.arg, group[0].settings.epochs)
                except TlbenchError:
                    raise
                except Exception:  # noqa: BLE001 - a plugin bug: its cells record it
                    continue

    def _prepared_backbone(self, cell: Cell) -> Optional[StagedModel]:
        try:
            return self.backbone(cell)
        except (PluginError, WeightsUnavailable, DataUnavailable):
            return None  # the cells record the broken plugin or skip the missing weights
        except TlbenchError:
            raise
        except Exception:  # noqa: BLE001 - a plugin bug: its cells record it with a traceback
            return None

    def model_for(self, cell: Cell):
        """A fresh copy of the backbone (built once per weights), the head seeded per cell:
        ``(model, strategy argument, strategy spec)``."""
        ref = cell.strategy_ref
        strategy = self.registry.get("strategies", ref.name)
        if strategy.weights is not None and cell.weights != strategy.weights:
            raise TlbenchError(  # cells.expand gives such strategies their own weights
                f"strategy {ref.name} starts from {strategy.weights!r} weights, "
                f"not {cell.weights!r}"
            )
        model = copy.deepcopy(self.backbone(cell))
        torch.manual_seed(cell.seed)  # same head init for every strategy of a seed: paired
        model.set_head(self.dataset(cell).num_classes, cell.settings.head_hidden)
        if strategy.prepare is not None:
            positional, _ = ref.split()
            strategy.prepare(model, positional if positional is not None else strategy.default_arg)
        model.to(self.device.device)
        return model, ref.arg, strategy

    # ---- training ---------------------------------------------------------------------
    def adapter(self, cell: Cell) -> BatchAdapter:
        """Raw uint8 images to the backbone's input: 3 channels, its size, its normalization
        (the trainer sets the memory format of each phase)."""
        spec = self.backbone_spec(cell)
        return BatchAdapter(cell.resolution, spec.mean, spec.std, self.device.device)

    def train_config(
        self,
        cell: Cell,
        batch_size: int,
        lr: float,
        cache_key: Optional[tuple],
        seed: Optional[int] = None,
        threshold: Optional[float] = None,
    ) -> TrainConfig:
        """The one TrainConfig builder: a target cell's, or a pretraining source run's
        (its own seed and the source dataset's threshold, nothing cached)."""
        s = cell.settings
        return TrainConfig(
            epochs=s.epochs,
            batch_size=batch_size,
            lr=lr,
            evals_per_epoch=s.evals_per_epoch,
            threshold=cell.threshold if threshold is None else threshold,
            seed=cell.seed if seed is None else seed,
            num_classes=self.dataset(cell).num_classes,
            autocast=self.device.is_cuda,
            cache_key=cache_key,
            augment=augmentation(cell, self.device.device),
            compile=self.compile_model,
            schedule=s.schedule,
        )

    def trainer(
        self,
        cell: Cell,
        batch_size: int,
        lr: float,
        on_epoch: Optional[Callable[[int, float], None]] = None,
    ) -> CellTrainer:
        """A fresh model for the cell and its (untrained) trainer at ``lr``."""
        splits, _ = self.splits_for(cell)
        model, strategy_arg, strategy = self.model_for(cell)
        phases = strategy.phases(len(model.stages), strategy_arg, cell.settings.epochs)
        config = self.train_config(cell, batch_size, lr, self.cache_key(cell, strategy))
        return self.trainer_for(model, phases, splits, self.adapter(cell), config, on_epoch)

    def trainer_for(self, model, phases, splits, adapter, config, on_epoch=None) -> CellTrainer:
        """A trainer that shares this workspace's feature cache, tuner and progress."""
        callbacks = {"on_step": self.on_step, "on_epoch": on_epoch}
        callbacks = {name: f for name, f in callbacks.items() if f is not None}
        return CellTrainer(
            model, phases, splits, adapter, config, self.cache, tuner=self.tuner, **callbacks
        )

    def cache_key(self, cell: Cell, strategy) -> tuple:
        """Cells sharing weights, resolution and data share frozen-prefix features.

        The seed is part of the key when it changes the weights (not imagenet) or the
        training subset (--train-size subsamples: each seed draws its own).
        """
        s = cell.settings
        seed = cell.seed if cell.weights != "imagenet" else None
        subset = self.split_key(cell)[-1]
        edited = cell.strategy if strategy.prepare is not None else None
        return (
            cell.backbone,
            cell.weights,
            seed,
            cell.resolution,
            cell.dataset,
            s.train_size,
            s.val_size,
            s.test_size,
            subset,
            edited,
        )


def augmentation(cell: Cell, device: torch.device) -> Optional[RandomShift]:
    """The cell's ``--augment`` setting as a seeded transform, or None."""
    spec = getattr(cell.settings, "augment", "none")
    return None if spec == "none" else RandomShift.parse(spec, device, cell.seed)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_backbone(model: object, name: str, plugin: str, resolution: int) -> StagedModel:
    """Hold a backbone plugin to its contract, with an error that names the plugin.

    ``build`` must return a :class:`StagedModel` whose stages map a ``[B, 3, R, R]`` batch
    to ``[B, num_features]`` pooled features (tlbench attaches the classifier head).
    One probe image at the cell's resolution checks that before any training.
    """
    where = f"backbone {name!r} from plugin {plugin!r}"
    if not isinstance(model, StagedModel):
        raise PluginError(
            f"{where}: build() returned a {type(model).__name__}, expected a "
            "tlbench.api.model.StagedModel (ordered stages ending in pooled features, no "
            "classifier); split it with tlbench.backbones.sources.staged_from_layout."
        )
    if len(model.stages) == 0 or not isinstance(model.num_features, int):
        raise PluginError(f"{where}: build() returned a StagedModel without stages.")
    device = next(model.parameters(), torch.empty(0)).device
    try:
        with torch.no_grad(), eval_mode(model):
            probe = torch.zeros(1, 3, resolution, resolution, device=device)
            out = model.forward_stages(probe)
    except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
        raise PluginError(
            f"{where}: its stages fail on a 1x3x{resolution}x{resolution} input: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    if tuple(out.shape) != (1, model.num_features):
        raise PluginError(
            f"{where}: its stages output shape {tuple(out.shape)} for one image, but "
            f"num_features={model.num_features}; the last stage must pool to "
            f"[batch, num_features] so tlbench can attach the classifier head."
        )
    return model


def availability(registry: Registry, data_dir: Optional[str]):
    """A function telling, per cell, why it cannot run here (or None). Corrupt data raises."""
    data_reasons: dict[str, Optional[str]] = {}

    def data_reason(dataset: str) -> Optional[str]:
        if dataset not in data_reasons:
            try:
                registry.get("datasets", dataset).probe(data_dir)
                data_reasons[dataset] = None
            except DataUnavailable as exc:
                data_reasons[dataset] = str(exc)
        return data_reasons[dataset]

    def check(cell: Cell) -> Optional[str]:
        if data_reason(cell.dataset):
            return data_reasons[cell.dataset]
        if cell.weights.startswith("pretrain:"):  # the source dataset must be here too
            reason = data_reason(cell.weights.split(":", 1)[1])
            return f"pretraining source: {reason}" if reason else None
        if cell.weights == "imagenet":
            return registry.get("backbones", cell.backbone).imagenet_unavailable()
        return None

    return check

