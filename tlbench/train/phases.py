"""Phases of a cell: which parameters train, in which modes, from which inputs.

A plan's phases (tlbench.api.specs.Phase) are entered one after another by the loop
(tlbench.train.loop); entering one sets requires_grad and train/eval modes, chooses the
memory layout, folds the frozen prefix for inference, builds the optimizer (carrying
Adam's moments over) and serves the frozen prefix's outputs from the feature cache when
they are still valid.  The free functions are shared with the reference loop and the
FLOP count (tlbench.perf).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from tlbench.api.dataset import Splits
from tlbench.api.model import StagedModel, count_params
from tlbench.api.specs import Phase
from tlbench.data.preprocess import BatchAdapter
from tlbench.train.autotune import FormatChoice, Tuner
from tlbench.train.evaluate import Predictor
from tlbench.train.feature_cache import FeatureCache, compute_prefix, prefix_bytes
from tlbench.train.state import PhaseState, Timing, TrainConfig


def compile_stages(model: StagedModel) -> None:
    """torch.compile every stage and the head, in place (parameter names, and so the freeze
    check, unchanged).  Stages share forward code, so dynamo keeps one compiled entry per
    stage under one code object: its recompile limit (default 8) must cover them all, or
    the stages past the limit silently run eager."""
    import torch._dynamo

    modules = [*model.stages, model.head]
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 4 * len(modules))
    for module in modules:
        module.compile()


def selected_params(stage: torch.nn.Module, phase: Phase) -> list[torch.nn.Parameter]:
    """Parameters of a trainable stage that the phase trains: both filters must accept them.

    ``param_filter`` sees the name inside the stage; ``module_filter`` the owning module.
    """
    chosen = []
    for prefix, module in stage.named_modules():
        if phase.module_filter is not None and not phase.module_filter(module):
            continue
        for name, p in module.named_parameters(prefix=prefix, recurse=False):
            if phase.param_filter is None or phase.param_filter(name, p):
                chosen.append(p)
    return chosen


def phase_stages(phase: Phase, n_stages: int) -> list[int]:
    """Indices of the stages ``phase`` trains, ascending (negative ones count from the end)."""
    return sorted({i % n_stages for i in phase.train_stages})


def phase_starts(phases: list[Phase], total_steps: int) -> list[int]:
    """Global step at which each phase starts: epoch fractions scaled to the budget."""
    total = sum(p.epoch_fraction for p in phases)
    starts, acc = [], 0.0
    for phase in phases:
        starts.append(round(acc / total * total_steps))
        acc += phase.epoch_fraction
    return starts


def trainable_groups(model: StagedModel, phase: Phase, stages: list[int], lr: float) -> list[dict]:
    """Set requires_grad as ``phase`` says; optimizer groups: the head at ``lr``, each
    trained stage at ``lr`` x the phase's scale x its layer-wise decay."""
    model.requires_grad_(False)
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    model.head.requires_grad_(True)
    for index in stages:
        chosen = selected_params(model.stages[index], phase)
        for p in chosen:
            p.requires_grad_(True)
        if chosen:
            decay = phase.stage_lr_decay ** (len(model.stages) - index)
            groups.append({"params": chosen, "lr": lr * phase.lr_scale * decay})
    return groups


def carry_state(previous: torch.optim.Optimizer, optimizer: torch.optim.Optimizer) -> None:
    """Give ``optimizer`` the per-parameter state (Adam's moments, step) that ``previous``
    holds for the parameters both train."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p in previous.state:
                optimizer.state[p] = previous.state[p]


def is_norm_with_stats(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.modules.batchnorm._NormBase) and module.track_running_stats


def set_phase_modes(model: StagedModel, stages: list[int], bn: str = "train") -> None:
    """Frozen stages in eval mode; trained stages in train mode, their BatchNorm in eval
    (running statistics fixed) when the phase's policy is ``frozen``."""
    model.eval()
    for index in stages:
        model.stages[index].train()
        if bn == "frozen":
            for module in model.stages[index].modules():
                if is_norm_with_stats(module):
                    module.eval()
    model.head.train()


def adapting_modules(model: StagedModel, stages: list[int], bn: str) -> set[str]:
    """Names of the normalization modules whose running statistics the policy lets move
    (what the plan says, not what the modules' flags say: freeze verification checks
    the rest even if a module ignores ``eval()``)."""
    if bn != "train":
        return set()
    return {
        f"stages.{index}" + (f".{name}" if name else "")
        for index in stages
        for name, module in model.stages[index].named_modules()
        if is_norm_with_stats(module)
    }


@dataclass
class PhaseLog:
    """What the record says about the phases as they were entered."""

    trainable: dict[str, int] = field(default_factory=dict)  # phase name -> params
    ever_trained: set[str] = field(default_factory=set)  # parameter names, any phase
    stats_adapted: set[str] = field(default_factory=set)  # modules whose statistics may move
    bn_policies: list[str] = field(default_factory=list)  # per phase: frozen | train
    cache_places: list[str] = field(default_factory=list)  # per phase (see prefix_inputs)
    layouts: list[FormatChoice] = field(default_factory=list)  # memory format per phase


class PhaseSetup:
    """Enters a cell's phases in order; holds what carries from one to the next (the
    optimizer's state) and the log of what each one chose."""

    def __init__(
        self,
        predictor: Predictor,
        config: TrainConfig,
        cache: FeatureCache,
        timing: Timing,
    ):
        self.predictor, self.config, self.cache, self.timing = predictor, config, cache, timing
        self.model: StagedModel = predictor.model
        self.adapter: BatchAdapter = predictor.adapter
        self.splits: Splits = predictor.splits
        self.tuner: Tuner = predictor.tuner
        self.device = predictor.device
        self.log = PhaseLog()
        self.optimizer: Optional[torch.optim.Optimizer] = None  # the phase's; state carries on

    def enter(self, phase: Phase) -> PhaseState:
        """Trainable parameters, modes, layout, fold, optimizer, cached inputs: in this
        order (the layout trial trains the parameters just chosen, on plain stages)."""
        n_stages = len(self.model.stages)
        stages = phase_stages(phase, n_stages)
        first = stages[0] if stages else n_stages
        params = self._set_trainable(phase, stages)
        self.log.trainable[phase.name] = count_params(p for g in params for p in g["params"])
        set_phase_modes(self.model, stages, phase.bn)
        self.log.bn_policies.append(phase.bn if stages else "frozen")
        self.log.stats_adapted |= adapting_modules(self.model, stages, phase.bn)
        self.predictor.unfold()  # the last phase's copy may cover these stages
        layout = self._choose_layout(first)
        self.predictor.fold(first)  # the frozen prefix, for inference (tlbench.train.bn_fold)
        optimizer = self._optimizer(params, phase)
        train_in, val_in, place = self._prefix_inputs(first)
        train_in, val_in = (self._in_layout(t, layout) for t in (train_in, val_in))
        self.log.cache_places.append(place)
        return PhaseState(phase, first, optimizer, train_in, val_in, place)

    def _set_trainable(self, phase: Phase, stages: list[int]) -> list[dict]:
        """requires_grad per the phase (remembered for the freeze check); optimizer groups."""
        groups = trainable_groups(self.model, phase, stages, self.config.lr)
        names = {id(p): n for n, p in self.model.named_parameters()}
        self.log.ever_trained |= {names[id(p)] for g in groups for p in g["params"]}
        return groups

    def _optimizer(self, groups: list[dict], phase: Phase) -> torch.optim.Optimizer:
        """Adam over the phase's groups, carrying over the moments of every parameter that
        trained in the previous phase (unless the plan resets them)."""
        # fused: one kernel per parameter instead of ~10 elementwise passes; same update
        # rule (measured on 2 CPU cores: resnet18 Adam step 57 ms -> 12 ms)
        optimizer = torch.optim.Adam(groups, fused=self.device.type in ("cpu", "cuda"))
        for group in optimizer.param_groups:
            group["base_lr"] = group["lr"]  # what tlbench.train.schedule scales
        previous, self.optimizer = self.optimizer, optimizer
        if previous is not None and not phase.reset_optimizer:
            carry_state(previous, optimizer)
        return optimizer

    def _choose_layout(self, first: int) -> FormatChoice:
        """NCHW or NHWC for this phase (see tlbench.train.autotune); model and batches follow."""
        trained = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        key = (
            tuple(self.model.stage_names),
            count_params(self.model.parameters()),
            first,
            hash(trained),
            self.config.batch_size,
            self.adapter.resolution,
        )
        t0 = time.perf_counter()
        choice = self.tuner.layout(self.model, first, lambda: self._probe_batch(first), key)
        self.timing.layout_trials += time.perf_counter() - t0
        self.model.to(memory_format=choice.memory_format)
        self.adapter.channels_last = choice.channels_last
        self.log.layouts.append(choice)
        return choice

    def _probe_batch(self, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch as stages[first:] see it: what a layout trial trains on."""
        size = min(self.config.batch_size, len(self.splits.train_labels))
        index = torch.arange(size, device=self.device)
        x = self.predictor.inputs(None, self.splits.train_images, index, first)
        return x, self.splits.train_labels[index]

    def _in_layout(self, cached: Optional[torch.Tensor], layout: FormatChoice):
        """Cached 4-d prefix outputs in the phase's layout (one copy per phase if not)."""
        if cached is None or cached.dim() != 4 or cached.device != self.device:
            return cached
        return cached.contiguous(memory_format=layout.memory_format)

    def _prefix_inputs(self, first: int):
        """(train, val) prefix outputs from the cache and where they live, or why not.

        The label goes to the record: ``device``/``host`` (cached there), ``none`` (no
        frozen prefix), or ``off:<reason>``: ``augment`` (the prefix sees new inputs each
        epoch), ``trained`` (an earlier phase trained it), ``budget`` (too big for the
        memory budget: recomputed per batch) or ``disabled`` (no cache key).
        """
        if first == 0:
            return None, None, "none"
        reason = self._cache_off_reason(first)
        if reason is not None:
            return None, None, f"off:{reason}"
        train, place = self._cached_split("train", self.splits.train_images, first)
        val, _ = self._cached_split("val", self.splits.val_images, first)
        if train is None or val is None:
            return None, None, "off:budget"
        for split in ("train", "val"):
            key = (self.config.cache_key, split, first)
            self.timing.fills_charged += self.cache.fill_seconds.get(key, 0.0)
        return train, val, place

    def _cache_off_reason(self, first: int) -> Optional[str]:
        if self.config.augment is not None:
            return "augment"
        if self.config.cache_key is None:
            return "disabled"
        return "trained" if self._prefix_was_trained(first) else None

    def _cached_split(self, split: str, images: torch.Tensor, first: int):
        """One split's prefix outputs (computed on a miss, in eval mode) and their place."""
        autocast, predictor = self.config.autocast, self.predictor
        return self.cache.get(
            (self.config.cache_key, split, first),
            lambda: prefix_bytes(self.model, first, images, self.adapter, len(images), autocast),
            lambda target: compute_prefix(
                self.model,
                first,
                images,
                self.adapter,
                predictor.plan(),
                target,
                autocast,
                forward=lambda x: predictor.forward(x, 0, first),
            ),
        )

    def _prefix_was_trained(self, first: int) -> bool:
        """A prefix trained in an earlier phase no longer matches the cached features."""
        names = {f"stages.{i}." for i in range(first)}
        return any(n.startswith(tuple(names)) for n in self.log.ever_trained)
