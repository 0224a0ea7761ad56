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

from tlbench.api.dataset import Splits
from tlbench.api.model import StagedModel, count_params
from tlbench.api.specs import Phase
from tlbench.data.preprocess import BatchAdapter, RandomShift
from tlbench.train import inference, schedule
from tlbench.train.autotune import BatchPlan, FormatChoice, Tuner
from tlbench.train.bn_fold import folded_prefix
from tlbench.train.device import synchronize
from tlbench.train.feature_cache import FeatureCache, _autocast, compute_prefix, prefix_bytes
from tlbench.train.freeze_check import FreezeSnapshot
from tlbench.train.metrics import (
    confidence_stats,
    confusion_matrix,
    encode_correct,
    epochs_to_threshold,
    per_class_scores,
)
from tlbench.train.schedule import lr_factor

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
    augment: Optional[RandomShift] = None  # training-input augmentation: no feature cache
    compile: bool = False  # torch.compile every stage and the head
    schedule: str = "constant"  # LR schedule over the budget (tlbench.train.schedule)


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
class Batch:
    """A training batch's indices on the device, and the same on the host (for a
    host-resident feature cache)."""

    index: torch.Tensor
    host_index: torch.Tensor


@dataclass
class LoopState:
    """Where a (possibly paused) training loop stands: what a resumed call needs."""

    starts: list[int]  # global step at which each phase starts
    evals: set[int]  # global steps followed by a validation point
    running_loss: torch.Tensor  # summed on the device, checked once per evaluation
    step: int = 0  # steps done
    state: Optional[PhaseState] = None
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    host_perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    warm_left: int = 0
    segment: Optional[tuple[float, int]] = None  # (start, images) of the timed steps
    paused_at: Optional[float] = None


@dataclass
class Timing:
    train_seconds: float = 0.0  # timed training steps only
    train_images: int = 0
    eval_seconds: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    end: float = 0.0  # training over (last step and evaluation)
    layout_trials: float = 0.0  # memory-format trials run by this cell (one-time)
    fills_paid: float = 0.0  # feature-cache fills computed by this cell (one-time)
    fills_charged: float = 0.0  # what the fills this cell used cost, whoever paid
    paused: float = 0.0  # between resumed calls (other LR candidates trained meanwhile)

    def train_seconds_e2e(self) -> float:
        """Training wall time as if this cell ran alone: evaluations and one-time trials
        out, the cost of every cache fill it used in (computed here or not)."""
        wall = self.end - self.start - self.eval_seconds - self.paused
        return wall - self.layout_trials - self.fills_paid + self.fills_charged


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
        tuner: Optional[Tuner] = None,
    ):
        self.model, self.phases, self.splits = model, phases, splits
        self.adapter, self.config, self.cache = adapter, config, cache
        self.tuner = tuner or Tuner(splits.train_images.device)
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
        self.layouts: list[FormatChoice] = []  # memory format per phase
        self.inference_batches: dict[int, int] = {}  # start stage -> batch of its last pass
        self.folded: Optional[torch.nn.Module] = None  # stages[:folded_upto], BN folded
        self.folded_upto = 0
        self.best = (-1.0, None)  # (val accuracy, state dict copy)
        self.timing = Timing()
        self.seconds_to_threshold: Optional[float] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None  # the phase's; state carries on
        self.bn_policies: list[str] = []  # per phase: frozen | train (specs.Phase.bn)
        self.stats_adapted: set[str] = set()  # modules whose running statistics may move
        self._loop: Optional[LoopState] = None  # created by the first train() call

    def inference_plan(self, start: int = 0) -> BatchPlan:
        """Batches of an inference pass from stage ``start`` on (evaluation, cache fill,
        test): CUDA twice the training batch, CPU timed (tlbench.train.autotune)."""
        key = (tuple(self.model.stage_names), self.n_stages, start, self.adapter.resolution)
        return self.tuner.inference_plan(key, self.config.batch_size)

    # ---- schedule -------------------------------------------------------------------
    def phase_boundaries(self) -> list[int]:
        """Global step at which each phase starts (fractions scaled to the budget)."""
        return phase_starts(self.phases, self.total_steps)

    def eval_steps(self) -> set[int]:
        k = self.config.evals_per_epoch
        points = {round(j * self.steps_per_epoch / k) for j in range(1, k * self.config.epochs + 1)}
        return {min(max(p, 1), self.total_steps) for p in points} | {self.total_steps}

    def rung_eval_step(self, eta: int) -> Optional[int]:
        """Where successive halving ranks LR candidates (tlbench.train.lr_search): the validation
        point nearest ``1/eta`` of the budget among those after the last phase has begun
        (None if there is none before the end).  Before that, a later phase's parameters
        have not trained yet: two_stage ranked at its phase boundary would choose the LR
        that suits the head alone (measured: 3e-3 at the rung, 87.8% final, where 1e-3
        ends at 93.2%).
        """
        last_start = max(self.phase_boundaries())
        inner = [s for s in self.eval_steps() if last_start < s < self.total_steps]
        return min(inner, key=lambda s: (abs(eta * s - self.total_steps), s)) if inner else None

    # ---- main loop ------------------------------------------------------------------
    def run(self) -> dict:
        """Train, then evaluate on test: the metric dict of the cell."""
        self.train()
        return self.finish()

    def train(self, until: Optional[int] = None) -> float:
        """Train to global step ``until`` (default: the end of the budget) and return the
        validation accuracy of the last evaluation point.

        Resumable: a later call continues where this one stopped, exactly as one call
        would have (same batches, optimizer state, phase changes), so an LR search can
        prune candidates part-way (tlbench.train.lr_search).  The time between calls is not
        charged to this cell.  Test is not touched: the search calls :meth:`finish` only
        for the candidate it keeps.
        """
        loop = self._loop or self._begin_loop()
        if loop.paused_at is not None:
            self.timing.paused += time.perf_counter() - loop.paused_at
        paid_before = self.cache.paid_seconds
        stop = self.total_steps if until is None else min(until, self.total_steps)
        for step in range(loop.step, stop):
            self._step(loop, step)
        loop.segment = self._close_segment(loop.segment)
        loop.step = max(loop.step, stop)
        self.last_state = loop.state
        self.timing.fills_paid += self.cache.paid_seconds - paid_before
        self.timing.end = loop.paused_at = time.perf_counter()
        return self.curve[-1][1]

    @property
    def steps_done(self) -> int:
        return self._loop.step if self._loop is not None else 0

    def _begin_loop(self) -> LoopState:
        self.snapshot = FreezeSnapshot(self.model)
        if self.config.compile:
            compile_stages(self.model)
        self._loop = LoopState(
            starts=self.phase_boundaries(),
            evals=self.eval_steps(),
            running_loss=torch.zeros((), device=self.device),
        )
        return self._loop

    def _step(self, loop: LoopState, step: int) -> None:
        """One optimizer step, with the phase change, reshuffle and evaluation due at it."""
        if step in loop.starts:
            loop.segment = self._close_segment(loop.segment)
            loop.state = self._enter_phase(self.phases[loop.starts.index(step)])
            loop.warm_left = WARMUP_STEPS
        if step % self.steps_per_epoch == 0:  # one host-to-device copy per epoch
            loop.host_perm = torch.randperm(len(self.splits.train_labels), generator=self.generator)
            loop.perm = loop.host_perm.to(self.device)
        if loop.segment is None and loop.warm_left == 0:
            synchronize(self.device)
            loop.segment = (time.perf_counter(), 0)
        size = self.config.batch_size
        lo = (step % self.steps_per_epoch) * size
        batch = Batch(loop.perm[lo : lo + size], loop.host_perm[lo : lo + size])
        if self.config.schedule != "constant":
            schedule.apply(
                loop.state.optimizer, lr_factor(self.config.schedule, step, self.total_steps)
            )
        loop.running_loss += self._train_step(loop.state, batch)
        if loop.warm_left:
            loop.warm_left -= 1
        elif loop.segment is not None:
            loop.segment = (loop.segment[0], loop.segment[1] + len(batch.index))
        if step + 1 in loop.evals:
            loop.segment = self._close_segment(loop.segment)
            self._check_finite(loop.running_loss, step + 1)
            self._evaluate_point(loop.state, step + 1)
        self.on_step(step + 1, self.total_steps)

    def finish(self) -> dict:
        """Freeze check and the test pass of the trained model (once per cell)."""
        return self._finish(self.snapshot, self.last_state)

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
        stages = phase_stages(phase, self.n_stages)
        first = stages[0] if stages else self.n_stages
        params = self._set_trainable(phase, stages)
        self.trainable_per_phase[phase.name] = count_params(p for g in params for p in g["params"])
        set_phase_modes(self.model, stages, phase.bn)
        self.bn_policies.append(phase.bn if stages else "frozen")
        self.stats_adapted |= adapting_modules(self.model, stages, phase.bn)
        self.folded, self.folded_upto = None, 0  # the last phase's copy may cover these stages
        layout = self._choose_layout(first)
        self._fold_stages(first)  # the frozen prefix, for inference passes (tlbench.train.bn_fold)
        optimizer = self._optimizer(params, phase)
        train_in, val_in, place = self._prefix_inputs(first)
        train_in, val_in = (self._in_layout(t, layout) for t in (train_in, val_in))
        self.cache_places.append(place)
        return PhaseState(phase, first, optimizer, train_in, val_in, place)

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
        self.layouts.append(choice)
        return choice

    def _fold_stages(self, stop: int) -> None:
        """Inference through stages[:stop] (frozen from now on) uses a copy with each
        BatchNorm folded into its convolution, when that copy checks out."""
        probe = self.adapter(self.splits.train_images[:16])
        self.folded = folded_prefix(self.model, stop, probe) if stop > 0 else None
        self.folded_upto = stop if self.folded is not None else 0

    def _forward(self, x: torch.Tensor, start: int = 0, stop: Optional[int] = None):
        """stages[start:stop] for inference: the folded copy where it covers them."""
        stop = self.n_stages if stop is None else stop
        if start < self.folded_upto:
            middle = min(stop, self.folded_upto)
            for stage in list(self.folded)[start:middle]:
                x = stage(x)
            start = middle
        return self.model.forward_stages(x, start, stop)

    def _probe_batch(self, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch as stages[first:] see it: what a layout trial trains on."""
        size = min(self.config.batch_size, len(self.splits.train_labels))
        index = torch.arange(size, device=self.device)
        x = self._inputs(None, self.splits.train_images, index, first)
        return x, self.splits.train_labels[index]

    def _in_layout(self, cached: Optional[torch.Tensor], layout: FormatChoice):
        """Cached 4-d prefix outputs in the phase's layout (one copy per phase if not)."""
        if cached is None or cached.dim() != 4 or cached.device != self.device:
            return cached
        return cached.contiguous(memory_format=layout.memory_format)

    def _set_trainable(self, phase: Phase, stages: list[int]) -> list[dict]:
        """requires_grad per the phase (remembered for the freeze check); optimizer groups."""
        groups = trainable_groups(self.model, phase, stages, self.config.lr)
        names = {id(p): n for n, p in self.model.named_parameters()}
        self.ever_trained |= {names[id(p)] for g in groups for p in g["params"]}
        return groups

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
        autocast = self.config.autocast
        return self.cache.get(
            (self.config.cache_key, split, first),
            lambda: prefix_bytes(self.model, first, images, self.adapter, len(images), autocast),
            lambda target: compute_prefix(
                self.model,
                first,
                images,
                self.adapter,
                self.inference_plan(),
                target,
                autocast,
                forward=lambda x: self._forward(x, 0, first),
            ),
        )

    def _prefix_was_trained(self, first: int) -> bool:
        """A prefix trained in an earlier phase no longer matches the cached features."""
        names = {f"stages.{i}." for i in range(first)}
        return any(n.startswith(tuple(names)) for n in self.ever_trained)

    # ---- steps and evaluation ---------------------------------------------------------
    def _train_step(self, state: PhaseState, batch: Batch) -> torch.Tensor:
        """One optimizer step; returns the loss as a tensor (no sync, no ``.item()``)."""
        if state.train_inputs is not None:
            x = self._cached_batch(state.train_inputs, batch)
        else:
            images, first = self.splits.train_images, state.first_trainable
            x = self._inputs(None, images, batch.index, first, augment=True)
        with _autocast(self.device, self.config.autocast):
            logits = self.model.head(self.model.forward_stages(x, state.first_trainable))
            loss = F.cross_entropy(logits.float(), self.splits.train_labels[batch.index])
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        return loss.detach()

    def _cached_batch(self, cached: torch.Tensor, batch: Batch) -> torch.Tensor:
        """A training batch of cached features; a host cache is indexed on the host, so
        the only transfer is the batch itself (no device-to-host sync for the index)."""
        index = batch.index if cached.device == batch.index.device else batch.host_index
        return cached[index].to(self.device, non_blocking=True)

    def _inputs(
        self,
        cached: Optional[torch.Tensor],
        images: torch.Tensor,
        index: torch.Tensor | slice,
        first: int,
        augment: bool = False,
    ) -> torch.Tensor:
        """Prefix outputs for a batch: from the cache, or recomputed without gradients.

        With ``augment`` (training batches) raw images go through ``config.augment``.
        """
        if cached is not None:
            return cached[index].to(self.device, non_blocking=True)
        raw = images[index]
        if augment and self.config.augment is not None:
            raw = self.config.augment(raw)
        x = self.adapter(raw)
        if first == 0:
            return x
        with torch.no_grad(), _autocast(self.device, self.config.autocast):
            return self._forward(x, 0, first)

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        cached: Optional[torch.Tensor] = None,
        first: int = 0,
        confidence: bool = False,
        keep: Optional[list[torch.Tensor]] = None,
    ):
        """Predicted classes in eval mode; starts from cached prefix outputs when given.

        With ``confidence`` returns ``(classes, max softmax probability)``.  With ``keep``
        (and no cache) the outputs of stages[:first] are appended to it on the way: the
        same arithmetic, kept so a second pass over these images can start there.
        """
        was = [m.training for m in self.model.modules()]
        self.model.eval()
        preds, confs = [], []
        start_at = first if cached is not None or keep is not None else 0

        def batch(index: slice) -> None:
            x = self._inputs(cached, images, index, 0 if keep is not None else start_at)
            with _autocast(self.device, self.config.autocast):
                if keep is not None:
                    x = self._forward(x, 0, first)
                    keep.append(x)
                out = self.model.head(self._forward(x, start_at))
            preds.append(out.argmax(1))
            if confidence:
                confs.append(out.float().softmax(1).amax(1))

        plan = self.inference_plan(start_at if cached is not None else 0)
        plan.run(len(images), batch)
        self.inference_batches[start_at if cached is not None else 0] = plan.size
        for module, mode in zip(self.model.modules(), was, strict=True):
            module.training = mode
        return (torch.cat(preds), torch.cat(confs)) if confidence else torch.cat(preds)

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
            t = self.timing
            elapsed = time.perf_counter() - t.start - t.eval_seconds - t.paused
            self.seconds_to_threshold = round(elapsed, 3)
        if step % self.steps_per_epoch == 0:
            self.on_epoch(step // self.steps_per_epoch, accuracy)

    # ---- the end --------------------------------------------------------------------
    def _finish(self, snapshot: FreezeSnapshot, state: PhaseState) -> dict:
        violations = snapshot.changed(self.ever_trained, self.stats_adapted)
        test_labels = self.splits.test_labels
        keep = self._test_prefix_room(state)
        phase_fold = self.folded, self.folded_upto
        self._fold_stages(self.n_stages)  # training is over: every stage is final now
        folded = self.folded is not None
        preds, confidence = self.predict(
            self.splits.test_images, first=state.first_trainable, confidence=True, keep=keep
        )
        self.folded, self.folded_upto = phase_fold  # the best checkpoint has other weights
        test_prefix = torch.cat(keep) if keep else None
        confusion = confusion_matrix(preds, test_labels, self.config.num_classes)
        final = 100.0 * float((preds == test_labels).float().mean())
        return {
            "epochs_to_threshold": epochs_to_threshold(self.curve, self.config.threshold),
            "seconds_to_threshold": self.seconds_to_threshold,
            "epoch_budget": self.config.epochs,
            "final_accuracy": round(final, 4),
            "best_val_accuracy": round(max(a for _, a in self.curve), 4),
            "best_val_test_accuracy": round(
                self._best_checkpoint_accuracy(final, test_prefix, state.first_trainable), 4
            ),
            "trainable_params": max(self.trainable_per_phase.values()),
            "trainable_params_per_phase": self.trainable_per_phase,
            "total_params": count_params(self.model.parameters()),
            **self._throughput(),
            **self._inference_rate(),
            "bn_policy": ",".join(self.bn_policies),
            "freeze_verified": not violations,
            "freeze_violations": violations[:20],
            "feature_cache": ",".join(self.cache_places),
            "memory_format": ",".join(choice.label() for choice in self.layouts),
            "memory_format_rates": [choice.rates for choice in self.layouts],
            "inference_batch": self.inference_batches.get(0),
            "inference_folded_batchnorm": folded,
            "curve": [list(p) for p in self.curve],
            "per_class": per_class_scores(confusion),
            "confusion": confusion.cpu().tolist(),
            "test_correct": encode_correct(preds == test_labels),
            **confidence_stats(confidence, preds == test_labels),
        }

    def _throughput(self) -> dict:
        """End-to-end training rate (the header's), the step-only rate (None: untimed)
        and the one-time costs this cell happened to pay, apart."""
        t = self.timing
        seconds = t.train_seconds_e2e()
        images = self.config.epochs * len(self.splits.train_labels)
        step_rate = t.train_images / t.train_seconds if t.train_images else None
        return {
            "train_throughput": round(images / max(seconds, 1e-9), 2),
            "train_seconds": round(seconds, 3),
            "train_step_throughput": round(step_rate, 2) if step_rate else None,
            "one_time_seconds": {
                "cache_fill": round(t.fills_paid, 3),
                "layout_trials": round(t.layout_trials, 3),
            },
            "cache_fill_charged_seconds": round(t.fills_charged, 3),
        }

    def _inference_rate(self) -> dict:
        """timm-style inference throughput, once per network (tlbench.train.inference)."""
        batch = self.inference_batches.get(0) or self.config.batch_size
        key = ("infer", inference.network_key(self.model, self.adapter.resolution, batch))
        if key not in self.tuner.decisions:
            self.tuner.decisions[key] = inference.measure(
                self.model,
                self.adapter,
                self.splits.test_images,
                batch,
                lambda: _autocast(self.device, self.config.autocast),
            )
        return dict(self.tuner.decisions[key])

    def _test_prefix_room(self, state: PhaseState) -> Optional[list]:
        """An empty list when the test split's prefix outputs may be kept on the device
        (the last phase's prefix was never trained and they fit the cache budget)."""
        if state.val_inputs is None or len(state.val_inputs) == 0:
            return None
        per_image = state.val_inputs[0].numel() * state.val_inputs.element_size()
        place = self.cache.place_for(per_image * len(self.splits.test_labels))
        fits = place == "device" or (place == "host" and self.device.type == "cpu")
        return [] if fits else None

    def _best_checkpoint_accuracy(
        self, final: float, test_prefix: Optional[torch.Tensor], first: int
    ) -> float:
        """Test accuracy of the best-validation checkpoint (the final model if it is best).

        When the last phase's prefix was never trained, every checkpoint shares it, so the
        test pass starts from the prefix outputs the final pass kept.
        """
        best_acc, best_state = self.best
        if best_state is None or best_acc <= self.curve[-1][1]:
            return final
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(best_state)
        preds = self.predict(
            self.splits.test_images, test_prefix, first if test_prefix is not None else 0
        )
        self.model.load_state_dict(current)
        return 100.0 * float((preds == self.splits.test_labels).float().mean())


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
