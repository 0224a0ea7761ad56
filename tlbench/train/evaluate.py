"""Inference passes of a cell: validation points, the test pass, the best checkpoint.

Apart from the step loop (tlbench.train.loop) because none of it trains: every pass runs
in eval mode without gradients, through the BatchNorm-folded copy of the frozen prefix
where there is one (tlbench.train.bn_fold), and from cached prefix outputs when given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from tlbench.api.dataset import Splits
from tlbench.api.model import StagedModel
from tlbench.data.preprocess import BatchAdapter
from tlbench.train import inference
from tlbench.train.autotune import BatchPlan, Tuner
from tlbench.train.bn_fold import folded_prefix
from tlbench.train.feature_cache import FeatureCache, _autocast
from tlbench.train.modes import eval_mode
from tlbench.train.state import PhaseState, Timing, TrainConfig


class Predictor:
    """Forward passes for inference over a trainer's model, and what they decided: the
    folded prefix in use and the batch size each pass ran at."""

    def __init__(
        self,
        model: StagedModel,
        adapter: BatchAdapter,
        splits: Splits,
        config: TrainConfig,
        tuner: Tuner,
    ):
        self.model, self.adapter, self.splits = model, adapter, splits
        self.config, self.tuner = config, tuner
        self.device = splits.train_images.device
        self.n_stages = len(model.stages)
        self.folded: Optional[torch.nn.Module] = None  # stages[:folded_upto], BN folded
        self.folded_upto = 0
        self.batches: dict[int, int] = {}  # start stage -> batch of its last pass

    def plan(self, start: int = 0) -> BatchPlan:
        """Batches of an inference pass from stage ``start`` on (evaluation, cache fill,
        test): CUDA twice the training batch, CPU timed (tlbench.train.autotune)."""
        key = (tuple(self.model.stage_names), self.n_stages, start, self.adapter.resolution)
        return self.tuner.inference_plan(key, self.config.batch_size)

    def fold(self, stop: int) -> None:
        """Inference through stages[:stop] (frozen from now on) uses a copy with each
        BatchNorm folded into its convolution, when that copy checks out."""
        probe = self.adapter(self.splits.train_images[:16])
        self.folded = folded_prefix(self.model, stop, probe) if stop > 0 else None
        self.folded_upto = stop if self.folded is not None else 0

    def unfold(self) -> None:
        """Plain stages again (the weights changed, or a new phase decides anew)."""
        self.folded, self.folded_upto = None, 0

    def forward(self, x: torch.Tensor, start: int = 0, stop: Optional[int] = None):
        """stages[start:stop] for inference: the folded copy where it covers them."""
        stop = self.n_stages if stop is None else stop
        if start < self.folded_upto:
            middle = min(stop, self.folded_upto)
            for stage in list(self.folded)[start:middle]:
                x = stage(x)
            start = middle
        return self.model.forward_stages(x, start, stop)

    def inputs(
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
            return self.forward(x, 0, first)

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        cached: Optional[torch.Tensor] = None,
        first: int = 0,
        confidence: bool = False,
        keep: Optional[list[torch.Tensor]] = None,
    ):
        """Predicted classes of ``images``, in eval mode.

        ``cached``: the images' stages[:first] outputs; only the rest runs.  ``keep``
        (without a cache): the outputs of stages[:first] are appended to it on the way,
        the same arithmetic, so a second pass over these images can start there.
        ``confidence``: returns ``(classes, max softmax probability)``.
        """
        assert cached is None or keep is None, "a cached pass has no prefix to keep"
        start = first if cached is not None or keep is not None else 0  # of the last part
        preds, confs = [], []

        def batch(index: slice) -> None:
            x = self.inputs(cached, images, index, 0)
            with _autocast(self.device, self.config.autocast):
                if keep is not None:
                    x = self.forward(x, 0, first)
                    keep.append(x)
                out = self.model.head(self.forward(x, start))
            preds.append(out.argmax(1))
            if confidence:
                confs.append(out.float().softmax(1).amax(1))

        plan_start = start if cached is not None else 0
        with eval_mode(self.model):
            plan = self.plan(plan_start)
            plan.run(len(images), batch)
        self.batches[plan_start] = plan.size
        return (torch.cat(preds), torch.cat(confs)) if confidence else torch.cat(preds)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of ``preds`` equal to ``labels``."""
    return 100.0 * float((preds == labels).float().mean())


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def validation_accuracy(predictor: Predictor, splits: Splits, state: PhaseState) -> float:
    """A validation point: from the phase's cached prefix outputs when it has them."""
    preds = predictor.predict(splits.val_images, state.val_inputs, state.first_trainable)
    return accuracy(preds, splits.val_labels)


@dataclass
class TestPass:
    """The trained model's one pass over the test split."""

    __test__ = False  # not a pytest class, wherever it is imported

    preds: torch.Tensor
    confidence: torch.Tensor  # max softmax probability per image
    accuracy: float
    prefix: Optional[torch.Tensor]  # stages[:first_trainable] outputs, if they were kept
    folded: bool  # the pass ran through a BatchNorm-folded copy


def run_test_pass(predictor: Predictor, state: PhaseState, cache: FeatureCache) -> TestPass:
    """Every stage is final now, so all of them may be folded for this pass; the phase's
    fold comes back afterwards (a best checkpoint has other weights past its prefix)."""
    splits = predictor.splits
    keep = _test_prefix_room(state, cache, splits, predictor.device)
    phase_fold = predictor.folded, predictor.folded_upto
    predictor.fold(predictor.n_stages)
    folded = predictor.folded is not None
    preds, confidence = predictor.predict(
        splits.test_images, first=state.first_trainable, confidence=True, keep=keep
    )
    predictor.folded, predictor.folded_upto = phase_fold
    prefix = torch.cat(keep) if keep else None
    return TestPass(preds, confidence, accuracy(preds, splits.test_labels), prefix, folded)


def _test_prefix_room(
    state: PhaseState, cache: FeatureCache, splits: Splits, device: torch.device
) -> Optional[list]:
    """An empty list when the test split's prefix outputs may be kept on the device
    (the last phase's prefix was never trained and they fit the cache budget)."""
    if state.val_inputs is None or len(state.val_inputs) == 0:
        return None
    per_image = state.val_inputs[0].numel() * state.val_inputs.element_size()
    place = cache.place_for(per_image * len(splits.test_labels))
    fits = place == "device" or (place == "host" and device.type == "cpu")
    return [] if fits else None


def best_checkpoint_accuracy(
    predictor: Predictor,
    best: tuple[float, Optional[dict]],
    last_val: float,
    test: TestPass,
    first: int,
) -> float:
    """Test accuracy of the best-validation checkpoint (the final model if it is best).

    When the last phase's prefix was never trained, every checkpoint shares it, so the
    test pass starts from the prefix outputs the final pass kept.
    """
    best_acc, best_state = best
    if best_state is None or best_acc <= last_val:
        return test.accuracy
    model, splits = predictor.model, predictor.splits
    current = state_copy(model)
    model.load_state_dict(best_state)
    start = first if test.prefix is not None else 0
    preds = predictor.predict(splits.test_images, test.prefix, start)
    model.load_state_dict(current)
    return accuracy(preds, splits.test_labels)


def throughput(timing: Timing, images: int) -> dict:
    """End-to-end training rate (the header's) over ``images`` trained on, the step-only
    rate (None: untimed) and the one-time costs this cell happened to pay, apart."""
    seconds = timing.train_seconds_e2e()
    step_rate = timing.train_images / timing.train_seconds if timing.train_images else None
    return {
        "train_throughput": round(images / max(seconds, 1e-9), 2),
        "train_seconds": round(seconds, 3),
        "train_step_throughput": round(step_rate, 2) if step_rate else None,
        "one_time_seconds": {
            "cache_fill": round(timing.fills_paid, 3),
            "layout_trials": round(timing.layout_trials, 3),
        },
        "cache_fill_charged_seconds": round(timing.fills_charged, 3),
    }


def inference_rate(predictor: Predictor) -> dict:
    """timm-style inference throughput, once per network (tlbench.train.inference)."""
    config, tuner = predictor.config, predictor.tuner
    batch = predictor.batches.get(0) or config.batch_size
    key = ("infer", inference.network_key(predictor.model, predictor.adapter.resolution, batch))
    if key not in tuner.decisions:
        tuner.decisions[key] = inference.measure(
            predictor.model,
            predictor.adapter,
            predictor.splits.test_images,
            batch,
            lambda: _autocast(predictor.device, config.autocast),
        )
    return dict(tuner.decisions[key])
