"""The naive pipeline ``tlbench bench`` measures tlbench against: the seeds' way.

What practitioners usually write: a torchvision-style Dataset that turns each stored
uint8 image into a PIL image (exactly what ``torchvision.datasets.MNIST.__getitem__``
does), per-sample transforms ``Resize(R) + Grayscale(3) + ToTensor + Normalize`` with
the backbone's mean/std, a ``DataLoader``, fp32, the default memory format, and the
whole model (frozen backbone included) run on every batch of every epoch.

The strategy semantics are tlbench's, taken from the same functions (which stages
train, at which LR, BatchNorm of frozen modules in eval mode, when a phase starts),
and the shuffled order is the same seeded permutation per epoch, so the accuracy
difference measures the pipelines rather than the batch order.  Nothing here is slowed
down on purpose; this is the loop from the seeds, written plainly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from tlbench.api.dataset import Splits
from tlbench.api.model import StagedModel
from tlbench.api.specs import Phase
from tlbench.train.device import synchronize
from tlbench.train.phases import phase_stages, phase_starts, set_phase_modes, trainable_groups


class PilImages(Dataset):
    """uint8 images held in memory, one PIL image made per sample, then ``transform``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images.cpu(), labels.cpu(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].numpy())
        return self.transform(image), int(self.labels[index])


class EpochShuffle(Sampler[int]):
    """A seeded permutation per epoch: the order tlbench's step loop draws.

    ``RandomSampler(generator=...)`` would draw one extra permutation per epoch, so its
    second epoch would differ from tlbench's; speed is the same either way.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.generator = size, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=self.generator).tolist())


def seed_transform(
    resolution: int, mean: Sequence[float], std: Sequence[float], grayscale: bool
) -> transforms.Compose:
    """The seeds' per-sample transform (Grayscale only for one-channel images)."""
    steps = [transforms.Resize(resolution)]
    if grayscale:
        steps.append(transforms.Grayscale(num_output_channels=3))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


@dataclass
class NaiveResult:
    seconds: float  # wall, from building the datasets to the final test accuracy
    train_seconds: float  # inside the training loops (data loading included)
    train_images: int
    accuracy: float  # percent, test split, final model
    val_curve: list[float]  # percent, validation, after each epoch


@dataclass(frozen=True)
class NaiveSettings:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    num_workers: int = 0  # 0 on 2 cores: workers would compete with the compute threads


def run_naive(
    model: StagedModel,
    phases: list[Phase],
    splits: Splits,
    transform,
    settings: NaiveSettings,
    device: torch.device,
) -> NaiveResult:
    """Train ``model`` through ``phases`` the naive way; validate once per epoch."""
    start = time.perf_counter()
    train_set = PilImages(splits.train_images, splits.train_labels, transform)
    loader = DataLoader(
        train_set,
        batch_size=settings.batch_size,
        sampler=EpochShuffle(len(train_set), settings.seed),
        num_workers=settings.num_workers,
    )
    val_loader = _eval_loader(splits.val_images, splits.val_labels, transform, settings)
    test_loader = _eval_loader(splits.test_images, splits.test_labels, transform, settings)
    starts = phase_starts(phases, settings.epochs * math.ceil(len(train_set) / settings.batch_size))
    step, train_seconds, curve, stages = 0, 0.0, [], []
    optimizer = None
    for _epoch in range(settings.epochs):
        epoch_start = time.perf_counter()
        for images, labels in loader:
            if step in starts:
                phase = phases[starts.index(step)]
                optimizer, stages = _enter_phase(model, phase, settings.lr)
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        synchronize(device)
        train_seconds += time.perf_counter() - epoch_start
        curve.append(evaluate(model, val_loader, device))
        set_phase_modes(model, stages, phase.bn)  # back to the phase's modes after evaluation
    accuracy = evaluate(model, test_loader, device)
    seconds = time.perf_counter() - start
    return NaiveResult(seconds, train_seconds, len(train_set) * settings.epochs, accuracy, curve)


def _eval_loader(images, labels, transform, settings: NaiveSettings) -> DataLoader:
    dataset = PilImages(images, labels, transform)
    return DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.num_workers)


def _enter_phase(model: StagedModel, phase: Phase, lr: float):
    stages = phase_stages(phase, len(model.stages))
    groups = trainable_groups(model, phase, stages, lr)
    set_phase_modes(model, stages, phase.bn)
    return torch.optim.Adam(groups), stages


@torch.no_grad()
def evaluate(model: StagedModel, loader: DataLoader, device: torch.device) -> float:
    """Accuracy in percent, model in eval mode."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        predictions = model(images.to(device)).argmax(1).cpu()
        correct += int((predictions == labels).sum())
        total += len(labels)
    return 100.0 * correct / max(total, 1)
