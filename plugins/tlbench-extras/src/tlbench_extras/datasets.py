"""Two datasets: scikit-learn's digits (offline) and KMNIST (a directory or torchvision).

A dataset plugin registers a :class:`tlbench.api.specs.DatasetSpec`: a name, the class count,
and two functions of the user's ``--data-dir``: ``load`` returns uint8 images and int64
labels as a :class:`tlbench.api.dataset.LoadedDataset` that says where they came from;
``probe`` says the same without loading, or raises ``DataUnavailable`` with the reason
(tlbench then skips the dataset's cells and prints that reason).

Module import stays cheap (no torch, no scikit-learn): tlbench imports every plugin
whenever it starts, even for ``tlbench list``.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Optional

from tlbench.api.dataset import LoadedDataset
from tlbench.api.errors import DataUnavailable
from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import DatasetSpec
from tlbench.data.sources import DirSource, TorchvisionSource, load_cached, probe_first

DIGITS_SIDE = 28  # upsampled from 8x8 so the images look like MNIST's to a backbone
DIGITS_TEST_SIZE = 300  # stratified, fixed seed: the same test set for every cell
DIGITS_SOURCE = "sklearn:load_digits(8x8->28x28)"

KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
KMNIST_SOURCES = [
    DirSource("kmnist", 10, subdirs=("kmnist", "KMNIST/raw")),
    TorchvisionSource("kmnist", 10, class_name="KMNIST"),
]


# ---------------------------------------------------------------- digits


def probe_digits(data_dir: Optional[str] = None) -> str:
    if importlib.util.find_spec("sklearn") is None:
        raise DataUnavailable(
            "dataset 'digits' needs scikit-learn, which is not installed: pip install scikit-learn"
        )
    return DIGITS_SOURCE


@functools.lru_cache(maxsize=1)
def load_digits(data_dir: Optional[str] = None) -> LoadedDataset:
    """The 1,797 digits as 28x28 uint8 images, split 1,497 train / 300 test.

    ``data_dir`` is ignored: the images ship inside scikit-learn.  Cached per process,
    because every cell of a run asks for the same tensors.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits as sklearn_digits

    from tlbench.data.splits import holdout_validation

    probe_digits()
    digits = sklearn_digits()
    pixels = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    big = F.interpolate(pixels, size=(DIGITS_SIDE, DIGITS_SIDE), mode="bilinear")
    images = big.squeeze(1).round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(digits.target).long()
    train, test = holdout_validation(labels, DIGITS_TEST_SIZE, seed=0)
    return LoadedDataset(
        "digits", DIGITS_SOURCE, images[train], labels[train], images[test], labels[test], 10
    )


# ---------------------------------------------------------------- KMNIST


def load_kmnist(data_dir: Optional[str] = None) -> LoadedDataset:
    """Through tlbench's source chain: a named directory with corrupt files is an error,
    never silently replaced; a missing one falls through to torchvision."""
    return load_cached("kmnist", KMNIST_SOURCES, data_dir)


def probe_kmnist(data_dir: Optional[str] = None) -> str:
    return probe_first(KMNIST_SOURCES, data_dir, dataset="kmnist")


# ---------------------------------------------------------------- the hook


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec(
            name="digits",
            num_classes=10,
            load=load_digits,
            probe=probe_digits,
            description="scikit-learn's 8x8 digits upsampled to 28x28 (1,497 train / 300 "
            "test); offline",
            class_names=tuple(str(i) for i in range(10)),
        )
    )
    register(
        DatasetSpec(
            name="kmnist",
            num_classes=10,
            load=load_kmnist,
            probe=probe_kmnist,
            description="Kuzushiji-MNIST, 28x28 hiragana, 60k/10k: --data-dir or torchvision",
            class_names=KMNIST_CLASSES,
        )
    )
