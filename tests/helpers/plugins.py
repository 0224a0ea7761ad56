"""A tiny backbone and a synthetic IDX dataset, registered as a real pluggy plugin.

Used by the end-to-end tests: small enough to train in a second on 2 CPU cores, real
enough to go through the IDX loader, the stage machinery and the whole runner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlbench.api.errors import DataUnavailable
from tlbench.api.hookspecs import hookimpl
from tlbench.api.model import StagedModel
from tlbench.api.specs import BackboneSpec, DatasetSpec
from tlbench.data.idx import write_idx
from tlbench.data.sources import find_idx_files, load_idx_dir

IMAGE_SIDE = 12


def tiny_staged(weights) -> StagedModel:
    """Three stages: two conv blocks and a pooled head block (16 features)."""

    def block(cin, cout, stride):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )

    stages = [
        block(3, 8, 1),
        block(8, 16, 2),
        nn.Sequential(block(16, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    ]
    model = StagedModel(stages, 16, ["stem", "mid", "last"])
    if weights.kind == "file":
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
        model.stages.load_state_dict(state)
    model.weights_source = weights.label()
    return model


def write_synthetic_idx(
    directory: Path, n_train: int = 400, n_test: int = 100, seed: int = 0
) -> Path:
    """Four IDX files of learnable 12x12 digits: class c lights up row band c."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, IMAGE_SIDE, IMAGE_SIDE)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, c, :] = 250
            images[i, :, c] = 250
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return directory


class TinyPlugin:
    """Registers backbone ``tiny`` and dataset ``synth`` (read from ``data_root``)."""

    def __init__(self, data_root: Path):
        self.data_root = data_root

    @hookimpl
    def register_backbones(self, register):
        register(
            BackboneSpec(
                "tiny",
                tiny_staged,
                input_size=16,
                mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5),
                description="3-stage test CNN",
                imagenet_sources=("test-random",),
                imagenet_unavailable=lambda: None,
            )
        )

    @hookimpl
    def register_datasets(self, register):
        def files():
            found = find_idx_files(self.data_root)
            if found is None:
                raise DataUnavailable(f"no synthetic IDX files in {self.data_root}")
            return found

        register(
            DatasetSpec(
                "synth",
                10,
                load=lambda data_dir: load_idx_dir(files(), "synth", 10, f"dir:{self.data_root}"),
                probe=lambda data_dir: (files(), f"dir:{self.data_root}")[1],
                description="synthetic 12x12 bands",
            )
        )
