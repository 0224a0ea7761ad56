"""One cell's training loop: the step loop, its timing, and the record it returns.

Read it top to bottom: ``CellTrainer.train`` runs the steps (resumable, for the LR
search in tlbench.train.lr_search); each phase is entered by tlbench.train.phases (which
parameters train, whether a frozen prefix is served from the cache); every inference
pass is tlbench.train.evaluate's.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from tlbench.api.dataset import Splits
from tlbench.api.model import StagedModel, count_params
from tlbench.api.specs import Phase
from tlbench.data.preprocess import BatchAdapter
from tlbench.train import schedule
from tlbench.train.autotune import Tuner
from tlbench.train.device import synchronize
from tlbench.train.evaluate import (
    Predictor,
    best_checkpoint_accuracy,
    inference_rate,
    run_test_pass,
    state_copy,
    throughput,
    validation_accuracy,
)
from tlbench.train.feature_cache import FeatureCache, _autocast
from tlbench.train.freeze_check import FreezeSnapshot
from tlbench.train.metrics import (
    confidence_stats,
    confusion_matrix,
    encode_correct,
    epochs_to_threshold,
    per_class_scores,
)
from tlbench.train.phases import PhaseSetup, compile_stages, phase_starts
from tlbench.train.schedule import lr_factor
from tlbench.train.state import Batch, Diverged, LoopState, PhaseState, Timing, TrainConfig

WARMUP_STEPS = 2  # untimed steps at the start of each phase (allocator, cudnn autotune)


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
        self.config, self.cache = config, cache
        self.on_step, self.on_epoch = on_step, on_epoch
        self.device = splits.train_images.device
        self.steps_per_epoch = math.ceil(len(splits.train_labels) / config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.generator = torch.Generator().manual_seed(config.seed)
        self.curve: list[tuple[float, float]] = []  # (epoch, validation accuracy)
        self.best: tuple[float, Optional[dict]] = (-1.0, None)  # (val accuracy, state copy)
        self.seconds_to_threshold: Optional[float] = None
        tuner = tuner or Tuner(self.device)
        self.timing = Timing()
        self.predictor = Predictor(model, adapter, splits, config, tuner)
        self.setup = PhaseSetup(self.predictor, config, cache, self.timing)
        self._loop: Optional[LoopState] = None  # created by the first train() call
        self.snapshot: Optional[FreezeSnapshot] = None  # weights before training (the same)
        self.last_state: Optional[PhaseState] = None  # the phase the last train() ended in

    @property
    def optimizer(self) -> Optional[torch.optim.Optimizer]:
        """The current phase's optimizer (its state carries into the next phase)."""
        return self.setup.optimizer

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

    # ---- the step loop ------------------------------------------------------------------
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

    def _close_segment(self, segment):
        if segment is not None:
            synchronize(self.device)
            self.timing.train_seconds += time.perf_counter() - segment[0]
            self.timing.train_images += segment[1]
        return None

    def _check_finite(self, running_loss: torch.Tensor, step: int) -> None:
        if not bool(torch.isfinite(running_loss)):  # one sync per evaluation, not per step
            raise Diverged(step)

    def _enter_phase(self, phase: Phase) -> PhaseState:
        return self.setup.enter(phase)

    def _train_step(self, state: PhaseState, batch: Batch) -> torch.Tensor:
        """One optimizer step; returns the loss as a tensor (no sync, no ``.item()``)."""
        if state.train_inputs is not None:
            x = self._cached_batch(state.train_inputs, batch)
        else:
            images, first = self.splits.train_images, state.first_trainable
            x = self.predictor.inputs(None, images, batch.index, first, augment=True)
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

    def _evaluate_point(self, state: PhaseState, step: int) -> None:
        t0 = time.perf_counter()
        accuracy = validation_accuracy(self.predictor, self.splits, state)
        epoch = step / self.steps_per_epoch
        self.curve.append((round(epoch, 4), round(accuracy, 4)))
        if accuracy > self.best[0]:
            self.best = (accuracy, state_copy(self.model))
        self.timing.eval_seconds += time.perf_counter() - t0
        if self.seconds_to_threshold is None and accuracy >= self.config.threshold:
            t = self.timing
            elapsed = time.perf_counter() - t.start - t.eval_seconds - t.paused
            self.seconds_to_threshold = round(elapsed, 3)
        if step % self.steps_per_epoch == 0:
            self.on_epoch(step // self.steps_per_epoch, accuracy)

    # ---- the end --------------------------------------------------------------------
    def finish(self) -> dict:
        """Freeze check and the test pass of the trained model (once per cell)."""
        state, log, predictor = self.last_state, self.setup.log, self.predictor
        violations = self.snapshot.changed(log.ever_trained, log.stats_adapted)
        test = run_test_pass(predictor, state, self.cache)
        labels = self.splits.test_labels
        correct = test.preds == labels
        confusion = confusion_matrix(test.preds, labels, self.config.num_classes)
        last_val, first = self.curve[-1][1], state.first_trainable
        best_test = best_checkpoint_accuracy(predictor, self.best, last_val, test, first)
        images = self.config.epochs * len(self.splits.train_labels)
        return {
            "epochs_to_threshold": epochs_to_threshold(self.curve, self.config.threshold),
            "seconds_to_threshold": self.seconds_to_threshold,
            "epoch_budget": self.config.epochs,
            "final_accuracy": round(test.accuracy, 4),
            "best_val_accuracy": round(max(a for _, a in self.curve), 4),
            "best_val_test_accuracy": round(best_test, 4),
            "trainable_params": max(log.trainable.values()),
            "trainable_params_per_phase": log.trainable,
            "total_params": count_params(self.model.parameters()),
            **throughput(self.timing, images),
            **inference_rate(predictor),
            "bn_policy": ",".join(log.bn_policies),
            "freeze_verified": not violations,
            "freeze_violations": violations[:20],
            "feature_cache": ",".join(log.cache_places),
            "memory_format": ",".join(choice.label() for choice in log.layouts),
            "memory_format_rates": [choice.rates for choice in log.layouts],
            "inference_batch": predictor.batches.get(0),
            "inference_folded_batchnorm": test.folded,
            "curve": [list(p) for p in self.curve],
            "per_class": per_class_scores(confusion),
            "confusion": confusion.cpu().tolist(),
            "test_correct": encode_correct(correct),
            **confidence_stats(test.confidence, correct),
        }
