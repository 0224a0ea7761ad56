"""The frozen-prefix feature cache changes where features come from, never the result.

Tolerance: the cached and the recomputed paths run the same fp32 operations, but the
cache computes the prefix in inference batches and the plain path in training batches,
so convolutions may round differently in the last bits; after three epochs of Adam the
trained weights agree to ``ATOL`` absolute / ``RTOL`` relative (observed: < 1e-6).
"""

from __future__ import annotations

import pytest
import torch
from helpers.plugins import tiny_staged

from tlbench.api.specs import Phase
from tlbench.backbones.weights import WeightsChoice
from tlbench.data.preprocess import BatchAdapter, RandomShift
from tlbench.data.sources import find_idx_files, load_idx_dir
from tlbench.data.splits import make_splits
from tlbench.train.feature_cache import FeatureCache, compute_prefix
from tlbench.train.loop import CellTrainer
from tlbench.train.state import TrainConfig

ATOL, RTOL = 1e-5, 1e-4
CPU = torch.device("cpu")
LINEAR_PROBE = [Phase("head")]
PARTIAL_1 = [Phase("last1", train_stages=[2])]
TWO_STAGE = [
    Phase("head", epoch_fraction=0.5),
    Phase("finetune", epoch_fraction=0.5, train_stages=[0, 1, 2], lr_scale=0.1),
]


@pytest.fixture(autouse=True)
def one_layout(monkeypatch):
    """These tests compare cache against no cache: both in NCHW, not each in the layout
    its own timing trial picks (layouts round differently: tests/test_tuning.py)."""
    monkeypatch.setenv("TLBENCH_CHANNELS_LAST", "0")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny workloads on a shared 2-core box: one thread avoids OpenMP oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainer(synth_dir, phases, cache, cache_key="key", augment=None, seed=0) -> CellTrainer:
    torch.manual_seed(0)
    model = tiny_staged(WeightsChoice("random"))
    torch.manual_seed(seed)
    model.set_head(10)
    loaded = load_idx_dir(find_idx_files(synth_dir), "synth", 10, "test")
    splits = make_splits(loaded, 200, 50, 100)
    adapter = BatchAdapter(16, (0.5,) * 3, (0.5,) * 3, CPU)
    config = TrainConfig(
        epochs=3,
        batch_size=32,
        lr=0.01,
        evals_per_epoch=2,
        threshold=95.0,
        seed=seed,
        num_classes=10,
        cache_key=cache_key,
        augment=augment,
    )
    return CellTrainer(model, phases, splits, adapter, config, cache)


def assert_same_weights(a: CellTrainer, b: CellTrainer) -> None:
    theirs = b.model.state_dict()
    for name, mine in a.model.state_dict().items():
        assert torch.allclose(mine.float(), theirs[name].float(), atol=ATOL, rtol=RTOL), name


def test_cached_and_recomputed_prefix_train_the_same_head(synth_dir):
    for phases, first_place in ((LINEAR_PROBE, "device"), (PARTIAL_1, "device")):
        cached = trainer(synth_dir, phases, FeatureCache(CPU))
        plain = trainer(synth_dir, phases, FeatureCache(CPU), cache_key=None)
        with_cache, without = cached.run(), plain.run()
        assert with_cache["feature_cache"] == first_place  # CPU: features where the model runs
        assert without["feature_cache"] == "off:disabled"
        assert_same_weights(cached, plain)
        for key in ("final_accuracy", "best_val_test_accuracy", "curve", "confusion"):
            assert with_cache[key] == without[key], key
        assert with_cache["freeze_verified"] and without["freeze_verified"]


def test_two_stage_uses_the_cache_only_while_the_backbone_is_frozen(synth_dir):
    cached = trainer(synth_dir, TWO_STAGE, FeatureCache(CPU))
    plain = trainer(synth_dir, TWO_STAGE, FeatureCache(CPU), cache_key=None)
    assert cached.run()["feature_cache"] == "device,none"
    assert plain.run()["feature_cache"] == "off:disabled,none"
    assert_same_weights(cached, plain)


def test_cells_sharing_a_key_compute_the_prefix_once(synth_dir):
    cache = FeatureCache(CPU)
    trainer(synth_dir, LINEAR_PROBE, cache, seed=0).run()
    assert (cache.misses, cache.hits) == (2, 0)  # train and validation features
    trainer(synth_dir, LINEAR_PROBE, cache, seed=1).run()  # another seed: same features
    assert (cache.misses, cache.hits) == (2, 2)


def test_augmentation_turns_the_cache_off_visibly(synth_dir):
    shift = RandomShift(2, CPU, seed=0)
    record = trainer(synth_dir, LINEAR_PROBE, FeatureCache(CPU), augment=shift).run()
    assert record["feature_cache"] == "off:augment"
    assert record["freeze_verified"]


def test_a_prefix_over_budget_is_recomputed_and_said(synth_dir):
    record = trainer(synth_dir, PARTIAL_1, FeatureCache(CPU, budgets=(0, 0))).run()
    assert record["feature_cache"] == "off:budget"


def test_random_shift_moves_whole_images_within_the_padding():
    image = torch.zeros(64, 9, 9, dtype=torch.uint8)
    image[:, 4, 4] = 255
    shifted = RandomShift(2, CPU, seed=0)(image)
    assert shifted.shape == image.shape and shifted.dtype == torch.uint8
    rows, cols = (shifted == 255).nonzero()[:, 1], (shifted == 255).nonzero()[:, 2]
    assert len(rows) == 64  # the bright pixel survives in every image (|shift| <= 2)
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len({(int(r), int(c)) for r, c in zip(rows, cols, strict=True)}) > 5  # really random
    colour = RandomShift(1, CPU, seed=0)(torch.ones(4, 5, 5, 3, dtype=torch.uint8))
    assert colour.shape == (4, 5, 5, 3)


def test_compute_prefix_restores_each_modules_own_mode():
    model = tiny_staged(WeightsChoice("random"))
    model.train()
    batch_norm = model.stages[1][1]
    batch_norm.eval()  # e.g. a phase that keeps one module of a trainable stage frozen
    adapter = BatchAdapter(16, (0.5,) * 3, (0.5,) * 3, CPU)
    images = torch.randint(0, 255, (5, 12, 12), dtype=torch.uint8)
    out = compute_prefix(model, 2, images, adapter, 2, CPU, autocast=False)
    assert out.shape == (5, 16, 8, 8)
    assert model.stages[0].training and model.stages[1].training
    assert not batch_norm.training
