"""A dataset as the four standard IDX files (MNIST's layout): finding them in a
directory and loading them as a :class:`LoadedDataset`, with the checks that keep a
partial or foreign set from being benchmarked.  The sources (tlbench.data.sources) and
test fixtures share these; the file format itself is tlbench.data.idx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from tlbench.api.dataset import LoadedDataset
from tlbench.api.errors import TlbenchError
from tlbench.data.idx import read_idx_pair

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IDX_FILES_HINT = ", ".join(f"{stem}[.gz]" for stem in IDX_STEMS)


def find_idx_files(directory: Path, *, strict: bool = True) -> Optional[dict[str, Path]]:
    """The four standard IDX files in ``directory`` (raw preferred over ``.gz``).

    ``None`` when none of them is there.  A partial set raises when ``strict`` (someone
    put dataset files there and one is missing) and is ``None`` otherwise.
    """
    found: dict[str, Path] = {}
    for stem in IDX_STEMS:
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                found[stem] = directory / name
                break
    if len(found) == len(IDX_STEMS):
        return found
    if found and strict:
        missing = [stem for stem in IDX_STEMS if stem not in found]
        raise TlbenchError(
            f"incomplete IDX files in {directory}: found {', '.join(sorted(found))} but "
            f"missing {', '.join(missing)}; expected all four of {IDX_FILES_HINT}."
        )
    return None


def load_idx_dir(
    files: dict[str, Path], dataset: str, num_classes: int, source: str
) -> LoadedDataset:
    """Parse the four IDX files and check labels and image shapes agree."""
    train_x, train_y = read_idx_pair(files[IDX_STEMS[0]], files[IDX_STEMS[1]])
    test_x, test_y = read_idx_pair(files[IDX_STEMS[2]], files[IDX_STEMS[3]])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise TlbenchError(
            f"image shapes differ: {files[IDX_STEMS[0]]} has {tuple(train_x.shape[1:])}, "
            f"{files[IDX_STEMS[2]]} has {tuple(test_x.shape[1:])}; expected one image size."
        )
    _check_labels(train_y, files[IDX_STEMS[1]], num_classes)
    _check_labels(test_y, files[IDX_STEMS[3]], num_classes)
    return LoadedDataset(dataset, source, train_x, train_y, test_x, test_y, num_classes)


def _check_labels(labels: torch.Tensor, path: Path, num_classes: int) -> None:
    if len(labels) and int(labels.max()) >= num_classes:
        raise TlbenchError(
            f"label {int(labels.max())} out of range in {path}; expected labels "
            f"0..{num_classes - 1} (is this file from another dataset?)."
        )
