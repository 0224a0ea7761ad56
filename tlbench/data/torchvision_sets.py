"""Built-in torchvision datasets by name: cifar10, cifar100, svhn, stl10.

Sources, tried in order (like the IDX datasets' chain, tlbench.data.sources):

1. ``--data-dir``: the files in torchvision's own on-disk layout under ``DATA_DIR`` or
   ``DATA_DIR/<name>`` (``cifar-10-batches-py/``, ``cifar-100-python/``,
   ``train_32x32.mat`` + ``test_32x32.mat``, ``stl10_binary/``), read by torchvision's own
   dataset class.  Files are not checked against torchvision's MD5 sums (a copy, a
   subset or a re-export is still read); the data fingerprint in every cell's
   config_hash says what was loaded.  ``stl10`` needs only ``train_X/y.bin`` and
   ``test_X/y.bin`` (not the 2.6 GB unlabeled file).
2. torchvision's cache ``torchvision/<name>`` in tlbench's cache
   (tlbench.api.env.cache_dir), verified by torchvision (MD5), filled by
   torchvision's own download when online (never with ``TLBENCH_OFFLINE=1``).

Images come out as uint8 ``[N, H, W, 3]`` (32 px; STL-10 96 px) with int64 labels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from tlbench.api import env
from tlbench.api.dataset import LoadedDataset
from tlbench.api.errors import DataUnavailable, TlbenchError


@dataclass(frozen=True)
class TorchvisionSet:
    name: str
    class_name: str  # in torchvision.datasets
    num_classes: int
    files: tuple[str, ...]  # what --data-dir must hold, relative to the root
    description: str
    default_threshold: float = 95.0

    def split_kwargs(self, train: bool) -> dict:
        if self.class_name in ("SVHN", "STL10"):
            return {"split": "train" if train else "test"}
        return {"train": train}


SETS = {
    s.name: s
    for s in (
        TorchvisionSet(
            "cifar10",
            "CIFAR10",
            10,
            ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"),
            "CIFAR-10: 32x32 colour photos, 10 classes, 50k/10k",
            default_threshold=80.0,
        ),
        TorchvisionSet(
            "cifar100",
            "CIFAR100",
            100,
            ("cifar-100-python/train", "cifar-100-python/test"),
            "CIFAR-100: 32x32 colour photos, 100 classes, 50k/10k",
            default_threshold=60.0,
        ),
        TorchvisionSet(
            "svhn",
            "SVHN",
            10,
            ("train_32x32.mat", "test_32x32.mat"),
            "SVHN: 32x32 house-number digits, 73k/26k",
            default_threshold=90.0,
        ),
        TorchvisionSet(
            "stl10",
            "STL10",
            10,
            ("stl10_binary/train_X.bin", "stl10_binary/test_X.bin"),
            "STL-10: 96x96 colour photos, 10 classes, 5k/8k labelled",
            default_threshold=80.0,
        ),
    )
}


def cache_root(name: str) -> Path:
    return env.cache_dir("torchvision", name)


def _user_root(spec: TorchvisionSet, data_dir: Optional[str]) -> Optional[Path]:
    if not data_dir:
        return None
    for root in (Path(data_dir) / spec.name, Path(data_dir)):
        if all((root / f).is_file() for f in spec.files):
            return root.resolve()
    return None


def probe(spec: TorchvisionSet, data_dir: Optional[str]) -> str:
    """Which source load() would use; DataUnavailable with every reason and the fix."""
    root = _user_root(spec, data_dir)
    if root is not None:
        return f"dir:{root}"
    cached = cache_root(spec.name)
    if all((cached / f).is_file() for f in spec.files):
        return f"torchvision:{cached}"
    if not env.offline():
        return f"torchvision:{cached} (download needed)"
    where = f"--data-dir {data_dir} holds no {spec.files[0]}" if data_dir else "no --data-dir"
    raise DataUnavailable(
        f"no usable source for dataset {spec.name!r}: {where}; not cached in {cached}; and "
        f"TLBENCH_OFFLINE=1 forbids torchvision's download. Fix: run once with internet, "
        f"or put torchvision's files ({', '.join(spec.files)}) in --data-dir."
    )


@functools.lru_cache(maxsize=8)
def load(spec: TorchvisionSet, data_dir: Optional[str]) -> LoadedDataset:
    """Train and test splits through torchvision's own reader (once per process)."""
    source = probe(spec, data_dir)
    user = source.startswith("dir:")
    root = Path(source.split(":", 1)[1].split(" ", 1)[0])
    cls = _reader(spec.class_name, verify=not user)
    try:
        train = cls(str(root), download=not user, **spec.split_kwargs(True))
        test = cls(str(root), download=not user, **spec.split_kwargs(False))
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise TlbenchError(
            f"dataset {spec.name!r}: torchvision could not read {root}: {type(exc).__name__}: {exc}"
        ) from exc
    return LoadedDataset(
        spec.name,
        source.replace(" (download needed)", ""),
        *_tensors(train),
        *_tensors(test),
        spec.num_classes,
    )


def _tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's arrays as uint8 NHWC images and int64 labels."""
    data = np.asarray(dataset.data)
    if data.ndim == 4 and data.shape[1] == 3:  # SVHN and STL-10 hold NCHW
        data = data.transpose(0, 2, 3, 1)
    labels = getattr(dataset, "targets", None)
    labels = dataset.labels if labels is None else labels
    images = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
    return images, torch.as_tensor(np.asarray(labels), dtype=torch.int64)


@functools.cache
def _reader(class_name: str, verify: bool):
    """torchvision's class, or for a user's directory the same class with its MD5 sums
    off (``check_integrity(path, None)`` only checks that the file exists)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, class_name)
    if verify:
        return cls
    attrs: dict = {}
    if hasattr(cls, "train_list"):
        keep = 2 if class_name == "STL10" else None  # not the unlabeled file
        attrs["train_list"] = [[f, None] for f, _ in cls.train_list[:keep]]
        attrs["test_list"] = [[f, None] for f, _ in cls.test_list]
    if hasattr(cls, "meta"):
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        attrs["split_list"] = {k: [v[0], v[1], None] for k, v in cls.split_list.items()}
    return type(f"Unverified{class_name}", (cls,), attrs)


def dataset_specs() -> list:
    """One DatasetSpec per torchvision set, for the built-in datasets plugin."""
    from tlbench.api.specs import DatasetSpec

    return [
        DatasetSpec(
            name=spec.name,
            num_classes=spec.num_classes,
            load=functools.partial(_load, spec),
            probe=functools.partial(probe, spec),
            description=spec.description,
            default_threshold=spec.default_threshold,
        )
        for spec in SETS.values()
    ]


def _load(spec: TorchvisionSet, data_dir: Optional[str] = None) -> LoadedDataset:
    return load(spec, data_dir)
