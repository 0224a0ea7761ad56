"""One cell's training loop: phases, evaluations k times per epoch, timing, checks.

Read it top to bottom: ``CellTrainer.run`` drives the step loop; each phase decides
which parameters train and whether a frozen prefix can be served from the cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

import torch
import torch.nn.functional as F

from tlbench.adapt import BatchAdapter
from tlbench.data.loaded import Splits
from tlbench.device import synchronize
from tlbench.features import FeatureCache, _autocast, compute_prefix, prefix_bytes
from tlbench.freeze import FreezeSnapshot
from tlbench.metrics import confusion_matrix, epochs_to_threshold, per_class_scores
from tlbench.model import StagedModel, count_params
from tlbench.specs import Phase

WARMUP_STEPS = 2  # untimed steps at the start of each phase (allocator, cudnn autotune)


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    evals_per_epoch: int
    threshold: float  # percent
    seed: int
    num_classes: int
    autocast: bool = False  # bf16 autocast (CUDA only)
    cache_key: Optional[Hashable] = None  # None disables the feature cache


@dataclass
class Diverged(Exception):
    """Loss became NaN/inf; the cell stops and is recorded as diverged."""

    step: int


@dataclass
class PhaseState:
    phase: Phase
    first_trainable: int  # stages before this index are frozen: the prefix
    optimizer: torch.optim.Optimizer
    train_inputs: Optional[torch.Tensor]  # cached prefix outputs, or None: recompute
    val_inputs: Optional[torch.Tensor]
    cache_place: str


@dataclass
class Timing:
    train_seconds: float = 0.0  # timed training steps only
    train_images: int = 0
    eval_seconds: float = 0.0
    start: float = field(default_factory=time.perf_counter)


class CellTrainer:
    """Trains ``model`` through ``phases`` on ``splits`` and returns the metric dict."""

    def __init__(
        self,
        model: StagedModel,
        phases: list[Phase],
        splits: Splits,
        adapter: BatchAdapter,
        config: TrainConfig,
        cache: FeatureCache,
        on_step: Callable[[int, int], None] = lambda done, total: None,
        on_epoch: Callable[[int, float], None] = lambda epoch, acc: None,
    ):
        self.model, self.phases, self.splits = model, phases, splits
        self.adapter, self.config, self.cache = adapter, config, cache
        self.on_step, self.on_epoch = on_step, on_epoch
        self.device = splits.train_images.device
        self.n_stages = len(model.stages)
        self.steps_per_epoch = math.ceil(len(splits.train_labels) / config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.generator = torch.Generator().manual_seed(config.seed)
        self.curve: list[tuple[float, float]] = []
        self.trainable_per_phase: dict[str, int] = {}
        self.ever_trained: set[str] = set()
        self.cache_places: list[str] = []
        self.best = (-1.0, None)  # (val accuracy, state dict copy)
        self.timing = Timing()
        self.seconds_to_threshold: Optional[float] = None

    # ---- schedule -------------------------------------------------------------------
    def phase_boundaries(self) -> list[int]:
        """Global step at which each phase starts (fractions scaled to the budget)."""
        total = sum(p.epoch_fraction for p in self.phases)
        starts, acc = [], 0.0
        for phase in self.phases:
            starts.append(round(acc / total * self.total_steps))
            acc += phase.epoch_fraction
        return starts

    def eval_steps(self) -> set[int]:
        k = self.config.evals_per_epoch
        points = {round(j * self.steps_per_epoch / k) for j in range(1, k * self.config.epochs + 1)}
        return {min(max(p, 1), self.total_steps) for p in points} | {self.total_steps}

    # ---- main loop ------------------------------------------------------------------
    def run(self) -> dict:
        snapshot = FreezeSnapshot(self.model)
        starts, evals = self.phase_boundaries(), self.eval_steps()
        state: Optional[PhaseState] = None
        perm = torch.empty(0, dtype=torch.long)
        warm_left, segment = 0, None
        running_loss = torch.zeros((), device=self.device)
        for step in range(self.total_steps):
            if step in starts:
                segment = self._close_segment(segment)
                state = self._enter_phase(self.phases[starts.index(step)])
                warm_left = WARMUP_STEPS
            if step % self.steps_per_epoch == 0:
                perm = torch.randperm(len(self.splits.train_labels), generator=self.generator)
                perm = perm.to(self.device)
            if segment is None and warm_left == 0:
                synchronize(self.device)
                segment = (time.perf_counter(), 0)
            batch = perm[(step % self.steps_per_epoch) * self.config.batch_size :][
                : self.config.batch_size
            ]
            running_loss += self._train_step(state, batch)
            if warm_left:
                warm_left -= 1
            elif segment is not None:
                segment = (segment[0], segment[1] + len(batch))
            if step + 1 in evals:
                segment = self._close_segment(segment)
                self._check_finite(running_loss, step + 1)
                self._evaluate_point(state, step + 1)
            self.on_step(step + 1, self.total_steps)
        self._close_segment(segment)
        return self._finish(snapshot)

    def _close_segment(self, segment):
        if segment is not None:
            synchronize(self.device)
            self.timing.train_seconds += time.perf_counter() - segment[0]
            self.timing.train_images += segment[1]
        return None

    def _check_finite(self, running_loss: torch.Tensor, step: int) -> None:
        if not bool(torch.isfinite(running_loss)):  # one sync per evaluation, not per step
            raise Diverged(step)

    # ---- phases ---------------------------------------------------------------------
    def _enter_phase(self, phase: Phase) -> PhaseState:
        stages = sorted({i % self.n_stages for i in phase.train_stages})
        first = stages[0] if stages else self.n_stages
        params = self._set_trainable(phase, stages)
        self.trainable_per_phase[phase.name] = count_params(p for g in params for p in g["params"])
        self._set_modes(stages)
        optimizer = torch.optim.Adam(params)
        train_in, val_in, place = self._prefix_inputs(first)
        self.cache_places.append(place)
        return PhaseState(phase, first, optimizer, train_in, val_in, place)

    def _set_trainable(self, phase: Phase, stages: list[int]) -> list[dict]:
        """requires_grad per the phase; returns optimizer groups with per-stage LRs."""
        self.model.requires_grad_(False)
        base = self.config.lr * phase.lr_scale
        groups = [{"params": list(self.model.head.parameters()), "lr": base}]
        for module in self.model.head.parameters():
            module.requires_grad_(True)
        for index in stages:
            chosen = [
                p
                for name, p in self.model.stages[index].named_parameters()
                if phase.param_filter is None or phase.param_filter(name, p)
            ]
            for p in chosen:
                p.requires_grad_(True)
            if chosen:
                decay = phase.stage_lr_decay ** (self.n_stages - index)
                groups.append({"params": chosen, "lr": base * decay})
        names = {id(p): n for n, p in self.model.named_parameters()}
        self.ever_trained |= {names[id(p)] for g in groups for p in g["params"]}
        return groups

    def _set_modes(self, stages: list[int]) -> None:
        """Frozen stages in eval mode (BatchNorm statistics untouched); the rest train."""
        self.model.eval()
        for index in stages:
            self.model.stages[index].train()
        self.model.head.train()

    def _prefix_inputs(self, first: int):
        if first == 0 or self.config.cache_key is None or self._prefix_was_trained(first):
            return None, None, "none"
        tensors = []
        for split, images in (("train", self.splits.train_images), ("val", self.splits.val_images)):
            key = (self.config.cache_key, split, first)
            nbytes = prefix_bytes(
                self.model, first, images, self.adapter, len(images), self.config.autocast
            )
            cached, place = self.cache.get(
                key,
                nbytes,
                lambda target, im=images: compute_prefix(
                    self.model, first, im, self.adapter, 256, target, self.config.autocast
                ),
            )
            tensors.append(cached)
        if any(t is None for t in tensors):
            return None, None, "none"
        return tensors[0], tensors[1], place

    def _prefix_was_trained(self, first: int) -> bool:
        """A prefix trained in an earlier phase no longer matches the cached features."""
        names = {f"stages.{i}." for i in range(first)}
        return any(n.startswith(tuple(names)) for n in self.ever_trained)

    # ---- steps and evaluation ---------------------------------------------------------
    def _train_step(self, state: PhaseState, batch: torch.Tensor) -> torch.Tensor:
        x = self._inputs(state.train_inputs, self.splits.train_images, batch, state.first_trainable)
        with _autocast(self.device, self.config.autocast):
            logits = self.model.head(self.model.forward_stages(x, state.first_trainable))
            loss = F.cross_entropy(logits.float(), self.splits.train_labels[batch])
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        return loss.detach()

    def _inputs(
        self, cached: Optional[torch.Tensor], images: torch.Tensor, index: torch.Tensor, first: int
    ) -> torch.Tensor:
        """Prefix outputs for a batch: from the cache, or recomputed without gradients."""
        if cached is not None:
            return cached[index.to(cached.device)].to(self.device, non_blocking=True)
        x = self.adapter(images[index])
        if first == 0:
            return x
        with torch.no_grad(), _autocast(self.device, self.config.autocast):
            return self.model.forward_stages(x, 0, first)

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, cached: Optional[torch.Tensor] = None, first: int = 0
    ) -> torch.Tensor:
        """Predicted classes in eval mode; starts from cached prefix outputs when given."""
        was = [m.training for m in self.model.modules()]
        self.model.eval()
        preds = []
        size = max(self.config.batch_size, 256)
        for start in range(0, len(images), size):
            index = torch.arange(start, min(start + size, len(images)), device=self.device)
            x = self._inputs(cached, images, index, first if cached is not None else 0)
            with _autocast(self.device, self.config.autocast):
                out = self.model.head(
                    self.model.forward_stages(x, first if cached is not None else 0)
                )
            preds.append(out.argmax(1))
        for module, mode in zip(self.model.modules(), was, strict=True):
            module.training = mode
        return torch.cat(preds)

    def _evaluate_point(self, state: PhaseState, step: int) -> None:
        t0 = time.perf_counter()
        preds = self.predict(self.splits.val_images, state.val_inputs, state.first_trainable)
        accuracy = 100.0 * float((preds == self.splits.val_labels).float().mean())
        epoch = step / self.steps_per_epoch
        self.curve.append((round(epoch, 4), round(accuracy, 4)))
        if accuracy > self.best[0]:
            self.best = (
                accuracy,
                {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            )
        self.timing.eval_seconds += time.perf_counter() - t0
        if self.seconds_to_threshold is None and accuracy >= self.config.threshold:
            elapsed = time.perf_counter() - self.timing.start - self.timing.eval_seconds
            self.seconds_to_threshold = round(elapsed, 3)
        if step % self.steps_per_epoch == 0:
            self.on_epoch(step // self.steps_per_epoch, accuracy)

    # ---- the end --------------------------------------------------------------------
    def _finish(self, snapshot: FreezeSnapshot) -> dict:
        violations = snapshot.changed(self.ever_trained)
        test_labels = self.splits.test_labels
        synchronize(self.device)
        t0 = time.perf_counter()
        preds = self.predict(self.splits.test_images)
        synchronize(self.device)
        infer_seconds = time.perf_counter() - t0
        confusion = confusion_matrix(preds, test_labels, self.config.num_classes)
        final = 100.0 * float((preds == test_labels).float().mean())
        return {
            "epochs_to_threshold": epochs_to_threshold(self.curve, self.config.threshold),
            "seconds_to_threshold": self.seconds_to_threshold,
            "epoch_budget": self.config.epochs,
            "final_accuracy": round(final, 4),
            "best_val_accuracy": round(max(a for _, a in self.curve), 4),
            "best_val_test_accuracy": round(self._best_checkpoint_accuracy(final), 4),
            "trainable_params": max(self.trainable_per_phase.values()),
            "trainable_params_per_phase": self.trainable_per_phase,
            "total_params": count_params(self.model.parameters()),
            "train_throughput": round(
                self.timing.train_images / max(self.timing.train_seconds, 1e-9), 2
            ),
            "infer_throughput": round(len(test_labels) / max(infer_seconds, 1e-9), 2),
            "freeze_verified": not violations,
            "freeze_violations": violations[:20],
            "feature_cache": ",".join(self.cache_places),
            "curve": [list(p) for p in self.curve],
            "per_class": per_class_scores(confusion),
            "confusion": confusion.cpu().tolist(),
        }

    def _best_checkpoint_accuracy(self, final: float) -> float:
        """Test accuracy of the best-validation checkpoint (the final model if it is best)."""
        best_acc, best_state = self.best
        if best_state is None or best_acc <= self.curve[-1][1]:
            return final
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(best_state)
        preds = self.predict(self.splits.test_images)
        self.model.load_state_dict(current)
        return 100.0 * float((preds == self.splits.test_labels).float().mean())
