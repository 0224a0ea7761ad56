"""Stratified, seeded subsets: the train/validation/test tensors of one cell.

Validation (and a subsampled test set) use a fixed seed, independent of the cell's
seed, so every backbone x strategy x seed cell is scored on the same images (which is
what lets statistics pair test images across cells); only the training subset varies
with the seed: the runner passes the cell's seed (``Runner.splits_for``), so with
``--train-size`` each seed trains on its own stratified subsample, the same for every
strategy and backbone of that seed (seeds stay paired).  The seed also fixes the data
order and the head's initialisation (tlbench.train.loop).  Selection is vectorized: one
random key per image, a stable sort by class, and a per-class quota.
"""

from __future__ import annotations

from typing import Optional

import torch

from tlbench.api.dataset import LoadedDataset, Splits
from tlbench.api.errors import TlbenchError

FIXED_SEED = 0  # validation and test subsets: identical for every cell


def stratified_subsample(
    labels: torch.Tensor, n: int, seed: int, *, what: str = "sample"
) -> torch.Tensor:
    """Exactly ``n`` indices with class proportions kept (every class at least once).

    Returned sorted ascending, so the subset keeps the dataset's order and the same
    seed always gives the same subset.  ``what`` names the subset in error messages.
    """
    total = len(labels)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if n > total:
        raise TlbenchError(f"{what} of {n} images asked from only {total} (max {total}).")
    if n < len(classes):
        raise TlbenchError(
            f"a stratified {what} of {n} images cannot cover {len(classes)} classes: "
            f"need at least {len(classes)} (one per class)."
        )
    if n == total:
        return torch.arange(total)
    quotas = _class_quotas(counts, n)
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(total, generator=generator))
    order = order[torch.argsort(inverse[order], stable=True)]  # by class, random inside
    class_start = torch.cumsum(counts, 0) - counts
    sorted_class = inverse[order]
    rank = torch.arange(total) - class_start[sorted_class]
    chosen = order[rank < quotas[sorted_class]]
    return torch.sort(chosen).values


def holdout_validation(
    labels: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, validation), the validation part stratified."""
    if val_size < 0:
        raise TlbenchError(f"validation size must be >= 0, got {val_size}.")
    if val_size >= len(labels) and len(labels) > 0:
        raise TlbenchError(
            f"validation size {val_size} leaves no training images out of {len(labels)} "
            f"(max {len(labels) - 1})."
        )
    if val_size == 0:
        return torch.arange(len(labels)), torch.empty(0, dtype=torch.long)
    val_idx = stratified_subsample(labels, val_size, seed, what="validation set")
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx


def make_splits(
    ds: LoadedDataset,
    train_size: Optional[int],
    val_size: int,
    test_size: Optional[int],
    seed: int = 0,
) -> Splits:
    """One cell's splits: validation held out of train first, then train subsampled.

    Validation and the optional test subset use a fixed seed; ``seed`` only picks the
    training subset.  Images stay uint8, labels become int64.
    """
    if ds.val_labels is not None:  # an explicit val split: --val-size caps it
        return _with_own_validation(ds, train_size, val_size, test_size, seed)
    rest, val_idx = holdout_validation(ds.train_labels, val_size, FIXED_SEED)
    if train_size is not None:
        _check_size("train", train_size, len(rest), ds.name, f" left after holding out {val_size}")
        rest = rest[stratified_subsample(ds.train_labels[rest], train_size, seed, what="train set")]
    test_idx = torch.arange(len(ds.test_labels))
    if test_size is not None:
        _check_size("test", test_size, len(test_idx), ds.name, "")
        test_idx = stratified_subsample(ds.test_labels, test_size, FIXED_SEED, what="test set")
    return Splits(
        *_take(ds.train_images, ds.train_labels, rest),
        *_take(ds.train_images, ds.train_labels, val_idx),
        *_take(ds.test_images, ds.test_labels, test_idx),
    )


def _with_own_validation(
    ds: LoadedDataset, train_size: Optional[int], val_size: int, test_size: Optional[int], seed: int
) -> Splits:
    """Splits of a dataset with its own validation images (no hold-out from train)."""
    val_idx = torch.arange(len(ds.val_labels))
    if val_size < len(val_idx):
        val_idx = stratified_subsample(ds.val_labels, val_size, FIXED_SEED, what="validation set")
    rest = torch.arange(len(ds.train_labels))
    if train_size is not None:
        _check_size("train", train_size, len(rest), ds.name, "")
        rest = stratified_subsample(ds.train_labels, train_size, seed, what="train set")
    test_idx = torch.arange(len(ds.test_labels))
    if test_size is not None:
        _check_size("test", test_size, len(test_idx), ds.name, "")
        test_idx = stratified_subsample(ds.test_labels, test_size, FIXED_SEED, what="test set")
    return Splits(
        *_take(ds.train_images, ds.train_labels, rest),
        *_take(ds.val_images, ds.val_labels, val_idx),
        *_take(ds.test_images, ds.test_labels, test_idx),
    )


def _check_size(split: str, wanted: int, available: int, name: str, note: str) -> None:
    if wanted > available:
        raise TlbenchError(
            f"{split} size {wanted} is larger than the {available} {name} {split} images"
            f"{note} (max {available})."
        )
    if wanted <= 0:
        raise TlbenchError(f"{split} size must be positive, got {wanted}.")


def _take(
    images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return images.index_select(0, idx), labels.index_select(0, idx).long()


def _class_quotas(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Largest-remainder allocation of ``n`` over classes, at least one per class."""
    scaled = counts * n
    total = int(counts.sum())
    quotas = scaled // total
    remainder = n - int(quotas.sum())
    by_fraction = torch.argsort(scaled % total, descending=True, stable=True)
    quotas[by_fraction[:remainder]] += 1
    for k in torch.nonzero(quotas == 0).flatten().tolist():
        quotas[int(torch.argmax(quotas))] -= 1  # n >= classes, so the largest has > 1
        quotas[k] = 1
    return quotas
