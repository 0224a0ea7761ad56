"""Micro-benchmarks: one batch adaptation, one training step per strategy (and phase).

Not part of the default run. Run them with::

    .venv/bin/python -m pytest tests/benchmarks --benchmark-only

Settings: ``TLBENCH_BENCH_BACKBONE`` (default efficientnet_lite0, random init: timing
does not depend on the weights), 64 px, batch 64, on the device ``resolve_device``
picks (CUDA: bf16 autocast and channels_last, as in a real cell).
"""

from __future__ import annotations

import os

import pytest
import torch

from tlbench.api.dataset import Splits
from tlbench.backbones.weights import WeightsChoice
from tlbench.data.preprocess import BatchAdapter
from tlbench.perf.naive import seed_transform
from tlbench.plugins import registry as plugin_registry
from tlbench.train.device import resolve_device
from tlbench.train.feature_cache import FeatureCache
from tlbench.train.loop import CellTrainer
from tlbench.train.state import Batch, TrainConfig

BACKBONE = os.environ.get("TLBENCH_BENCH_BACKBONE", "efficientnet_lite0")
RESOLUTION, BATCH, IMAGES = 64, 64, 256
STEPS = [
    ("linear_probe", None, 0),
    ("partial", "1", 0),
    ("partial", "2", 0),
    ("full", None, 0),
    ("two_stage", None, 0),
    ("two_stage", None, 1),
]


@pytest.fixture(scope="module")
def hw():
    return resolve_device("auto")


@pytest.fixture(scope="module")
def registry():
    return plugin_registry.load_registry()


@pytest.fixture(scope="module")
def raw_images(hw):
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (IMAGES, 28, 28), dtype=torch.uint8, generator=generator)


def adapter_for(registry, hw) -> BatchAdapter:
    spec = registry.get("backbones", BACKBONE)
    return BatchAdapter(RESOLUTION, spec.mean, spec.std, hw.device, hw.channels_last)


def test_batch_adaptation(benchmark, registry, hw, raw_images):
    """uint8 [64, 28, 28] on the device -> normalized [64, 3, 64, 64]: tlbench's step."""
    adapter, batch = adapter_for(registry, hw), raw_images[:BATCH].to(hw.device)
    benchmark.group = "adapt one batch of 64"
    benchmark(lambda: adapter(batch).sum().item())


def test_naive_per_sample_transforms(benchmark, registry, raw_images):
    """The same batch the seeds' way: PIL image + Resize/Grayscale/ToTensor/Normalize each."""
    from PIL import Image

    spec = registry.get("backbones", BACKBONE)
    transform = seed_transform(RESOLUTION, spec.mean, spec.std, grayscale=True)
    images = [raw_images[i].numpy() for i in range(BATCH)]
    benchmark.group = "adapt one batch of 64"
    benchmark(lambda: torch.stack([transform(Image.fromarray(a)) for a in images]))


@pytest.mark.parametrize(("strategy", "arg", "phase_index"), STEPS)
def test_training_step(benchmark, registry, hw, raw_images, strategy, arg, phase_index):
    """One optimizer step of ``strategy``'s phase, inputs as a real cell gets them
    (cached prefix features where the phase can use the cache)."""
    trainer = make_trainer(registry, hw, raw_images, strategy, arg)
    state = trainer._enter_phase(trainer.phases[phase_index])
    index = torch.arange(BATCH)
    batch = Batch(index.to(hw.device), index)
    benchmark.group = f"one training step, {BACKBONE}, {RESOLUTION} px, batch {BATCH}"
    benchmark.extra_info["feature_cache"] = state.cache_place
    benchmark.pedantic(lambda: trainer._train_step(state, batch).item(), rounds=5, warmup_rounds=2)


def make_trainer(registry, hw, raw_images, strategy: str, arg) -> CellTrainer:
    torch.manual_seed(0)
    model = registry.get("backbones", BACKBONE).build(WeightsChoice("random"))
    model.set_head(10)
    model.to(hw.device)
    if hw.channels_last:
        model.to(memory_format=torch.channels_last)
    spec = registry.get("strategies", strategy)
    phases = spec.phases(len(model.stages), arg or spec.default_arg, 2)
    labels = torch.arange(IMAGES) % 10
    splits = Splits(raw_images, labels, raw_images[:64], labels[:64], raw_images, labels)
    config = TrainConfig(
        epochs=2,
        batch_size=BATCH,
        lr=1e-3,
        evals_per_epoch=1,
        threshold=95.0,
        seed=0,
        num_classes=10,
        autocast=hw.is_cuda,
        cache_key=("bench", BACKBONE, RESOLUTION),
    )
    adapter = adapter_for(registry, hw)
    return CellTrainer(
        model, phases, splits.to(hw.device), adapter, config, FeatureCache(hw.device)
    )
