"""The built-in image-folder dataset: ``--datasets folder:NAME=PATH``.

Layouts (classes are folder names, sorted; files ``*.png, *.jpg, *.jpeg, *.bmp,
*.webp``, any case):

- ``PATH/train/<class>/*``, ``PATH/test/<class>/*`` and optionally ``PATH/val/<class>/*``
  (without ``val/``, validation is held out of train as for every dataset);
- ``PATH/<class>/*``: one tree, split into train and test (TEST_FRACTION of each class,
  stratified, with the fixed seed SPLIT_SEED: the same test images on every machine).

Every image is decoded once, in parallel threads (Pillow releases the GIL while it
decodes and resizes), converted like torchvision's ``ImageFolder`` does (``RGB``, alpha
dropped; palettes expanded; 16-bit scaled to 8-bit; grayscale kept as one channel when
every image is grayscale), center-cropped to a square and resized to ``SIDE`` pixels
(``folder:NAME@SIDE=PATH``; default DEFAULT_SIDE).  The uint8 tensors are cached on disk
under ``folders/`` in tlbench's cache (tlbench.api.env.cache_dir), keyed by the
file list, sizes and mtimes (plus side and format): a second run starts from the cache;
any added, removed or touched file decodes again.  The key is part of the data source
written in every record (``folder:PATH key=<key> ...``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from tlbench.api import env
from tlbench.api.dataset import LoadedDataset
from tlbench.api.errors import DataUnavailable, TlbenchError, TlbenchWarning

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_SIDE = 64  # stored square side in px: the CPU profile's resolution; @224 for CUDA
TEST_FRACTION = 0.2  # single-tree layout: this share of each class is the test split
SPLIT_SEED = 0  # ... chosen with this fixed seed
CACHE_FORMAT = 1  # bump when decoding changes: old cache entries are then not reused
PLUGIN = "tlbench:folder"


class UnreadableImages(TlbenchWarning):
    """Unreadable files were skipped (``--skip-bad-images``); the count is recorded."""


@dataclass(frozen=True)
class FolderRequest:
    """What ``folder:NAME[@SIDE]=PATH`` asks for."""

    name: str
    root: Path
    side: int = DEFAULT_SIDE
    skip_bad: bool = False

    @classmethod
    def parse(cls, text: str, skip_bad: bool = False) -> FolderRequest:
        body = text[len("folder:") :]
        label, eq, path = body.partition("=")
        name, _, side = label.partition("@")
        if not eq or not name or not path:
            raise TlbenchError(
                f"--datasets {text!r}: expected folder:NAME=PATH (or folder:NAME@SIDE=PATH), "
                "e.g. folder:shapes=/data/shapes."
            )
        if side and not (side.isdigit() and 8 <= int(side) <= 1024):
            raise TlbenchError(f"--datasets {text!r}: SIDE must be a pixel count in 8..1024.")
        return cls(name, Path(path).expanduser().resolve(), int(side or DEFAULT_SIDE), skip_bad)


@dataclass(frozen=True)
class Layout:
    """The files of each split, their class indices, and the class names."""

    classes: tuple[str, ...]
    files: dict[str, list[tuple[Path, int]]]  # split -> [(path, class index)]
    kind: str  # "train/test", "train/val/test" or "one tree"

    def key(self, side: int) -> str:
        """sha256 over the format, the side and every file's split, path, size, mtime."""
        digest = hashlib.sha256(f"format={CACHE_FORMAT};side={side};".encode())
        for split, entries in self.files.items():
            for path, label in entries:
                stat = path.stat()
                digest.update(
                    f"{split}|{label}|{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
                )
        return digest.hexdigest()[:16]


# ---------------------------------------------------------------- scanning


def scan(root: Path, name: str) -> Layout:
    """The folder's layout; DataUnavailable when there are no images to read."""
    if not root.is_dir():
        raise DataUnavailable(f"dataset {name!r}: folder {root} does not exist.")
    if (root / "train").is_dir() and (root / "test").is_dir():
        splits = [s for s in ("train", "val", "test") if (root / s).is_dir()]
        classes = sorted({d.name for s in splits for d in _class_dirs(root / s)})
        index = {c: i for i, c in enumerate(classes)}
        files = {s: _images(root / s, index) for s in splits}
        return _checked(Layout(tuple(classes), files, "/".join(splits)), root, name)
    classes = sorted(d.name for d in _class_dirs(root))
    index = {c: i for i, c in enumerate(classes)}
    return _checked(Layout(tuple(classes), {"all": _images(root, index)}, "one tree"), root, name)


def _class_dirs(folder: Path) -> list[Path]:
    return [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def _images(folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    found = []
    for directory in _class_dirs(folder):
        for path in sorted(directory.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append((path, index[directory.name]))
    return found


def _checked(layout: Layout, root: Path, name: str) -> Layout:
    if not layout.classes or not any(layout.files.values()):
        raise DataUnavailable(
            f"dataset {name!r}: no images in {root}: expected {root}/<class>/*.png|jpg|... "
            f"or {root}/train/<class>/... and {root}/test/<class>/..."
        )
    empty = [s for s, entries in layout.files.items() if not entries]
    if empty:
        raise DataUnavailable(f"dataset {name!r}: no images under {root}/{empty[0]}/<class>/.")
    return layout


# ---------------------------------------------------------------- decoding


def decode(path: Path, side: int) -> np.ndarray:
    """One file as uint8 ``[side, side]`` (grayscale) or ``[side, side, 3]``."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.draft("RGB" if image.mode != "L" else "L", (side, side))  # JPEG: decode smaller
        image = _eight_bit(image)
        image = ImageOps.fit(image, (side, side), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def _eight_bit(image):
    """``L`` or ``RGB``: 16-bit and float scaled to 0..255, everything else converted."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode != "F" and values.max() > 255 else 255.0
        if image.mode == "F" and values.max() <= 1.0:
            high = 1.0
        return Image.fromarray(np.clip(values / high * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("1", "L", "LA"):
        return image.convert("L")
    return image.convert("RGB")


def decode_all(
    paths: list[Path], side: int, name: str, skip_bad: bool, workers: Optional[int] = None
) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode in parallel: ``(images, kept indices, skipped files)``; grayscale images
    stay one channel only if every kept image is grayscale."""
    workers = workers or min(32, os.cpu_count() or 1)
    out = np.empty((len(paths), side, side, 3), dtype=np.uint8)
    gray = np.zeros(len(paths), dtype=bool)
    failures: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            pixels = decode(paths[i], side)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            failures[i] = f"{type(exc).__name__}: {exc}"
            return
        gray[i] = pixels.ndim == 2
        out[i] = pixels[..., None] if pixels.ndim == 2 else pixels

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(len(paths)), chunksize=16))
    if failures and not skip_bad:
        first = min(failures)
        more = f" ({len(failures) - 1} more unreadable files)" if len(failures) > 1 else ""
        raise TlbenchError(
            f"dataset {name!r}: cannot read image {paths[first]}: {failures[first]}{more}; fix "
            "or remove it, or pass --skip-bad-images to skip unreadable files (counted in "
            "the record's data source)."
        )
    kept = [i for i in range(len(paths)) if i not in failures]
    images = torch.from_numpy(out[kept])
    images = images[..., 0].contiguous() if gray[kept].all() else images
    return images, kept, [str(paths[i]) for i in sorted(failures)]


# ---------------------------------------------------------------- loading, cached


def cache_dir() -> Path:
    """Decoded folders, under tlbench's cache (tlbench.api.env.cache_dir)."""
    return env.cache_dir("folders")


def load_folder(request: FolderRequest) -> LoadedDataset:
    """The folder as a LoadedDataset, from the on-disk cache when the files are unchanged."""
    layout = scan(request.root, request.name)
    key = layout.key(request.side)
    path = cache_dir() / f"{key}.pt"
    tensors = _read_cache(path)
    if tensors is None:
        tensors = _decode_layout(layout, request)
        _write_cache(path, tensors)
    skipped = tensors.pop("skipped")
    if skipped:
        warnings.warn(
            f"dataset {request.name!r}: skipped {len(skipped)} unreadable files "
            f"(--skip-bad-images), e.g. {skipped[0]}",
            UnreadableImages,
            stacklevel=2,
        )
    return LoadedDataset(
        request.name,
        source_text(request, layout, key, len(skipped)),
        tensors["train_images"],
        tensors["train_labels"],
        tensors["test_images"],
        tensors["test_labels"],
        len(layout.classes),
        val_images=tensors.get("val_images"),
        val_labels=tensors.get("val_labels"),
    )


def source_text(request: FolderRequest, layout: Layout, key: str, skipped: int = 0) -> str:
    split = (
        f"one tree split {TEST_FRACTION:g} test with seed {SPLIT_SEED}"
        if layout.kind == "one tree"
        else layout.kind
    )
    bad = f", {skipped} unreadable skipped" if skipped else ""
    return f"folder:{request.root} key={key} ({split}, {request.side}px{bad})"


def _decode_layout(layout: Layout, request: FolderRequest) -> dict:
    entries = [entry for split in layout.files.values() for entry in split]
    images, kept, skipped = decode_all(
        [p for p, _ in entries], request.side, request.name, request.skip_bad
    )
    labels = torch.tensor([entries[i][1] for i in kept], dtype=torch.int64)
    splits = [s for s, files in layout.files.items() for _ in files]
    split_of = np.array([splits[i] for i in kept])
    tensors: dict = {"skipped": skipped}
    if layout.kind == "one tree":
        from tlbench.data.splits import holdout_validation

        n_test = max(len(layout.classes), round(TEST_FRACTION * len(labels)))
        train_idx, test_idx = holdout_validation(labels, n_test, SPLIT_SEED)
        parts = {"train": train_idx, "test": test_idx}
    else:
        parts = {s: torch.from_numpy(np.nonzero(split_of == s)[0]) for s in layout.files}
    for split, idx in parts.items():
        tensors[f"{split}_images"] = images.index_select(0, idx).contiguous()
        tensors[f"{split}_labels"] = labels.index_select(0, idx)
    return tensors


def _read_cache(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:  # noqa: BLE001 - a damaged cache entry is decoded again
        return None


def _write_cache(path: Path, tensors: dict) -> None:
    """Atomic: a run killed mid-write leaves no half file under the key's name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        torch.save(tensors, partial)
        os.replace(partial, path)
    except OSError as exc:  # a read-only cache only costs the next run's decode
        warnings.warn(f"could not cache decoded images in {path}: {exc}", TlbenchWarning, 2)


# ---------------------------------------------------------------- the spec


def folder_spec(request: FolderRequest):
    """A DatasetSpec for the folder; its class count comes from scanning it now."""
    from tlbench.api.specs import DatasetSpec

    try:
        layout = scan(request.root, request.name)
    except DataUnavailable as exc:
        raise TlbenchError(str(exc)) from None  # a folder the user named: bad input
    return DatasetSpec(
        name=request.name,
        num_classes=len(layout.classes),
        load=lambda data_dir=None: load_folder(request),
        probe=lambda data_dir=None: _probe(request),
        description=f"image folder {request.root} ({layout.kind}, {request.side}px)",
        class_names=layout.classes,
        default_sizes=default_sizes(layout),
    )


def _probe(request: FolderRequest) -> str:
    layout = scan(request.root, request.name)
    return source_text(request, layout, layout.key(request.side))


def default_sizes(layout: Layout) -> dict[str, int]:
    """Sizes that fit the folder: all test images, a fifth of train for validation
    (unless val/ exists), the rest for training; profiles cap them (tlbench.plan.sizes)."""
    counts = {split: len(files) for split, files in layout.files.items()}
    classes = len(layout.classes)
    if "all" in counts:  # one tree: the split load_folder makes
        counts["test"] = max(classes, round(TEST_FRACTION * counts["all"]))
        counts["train"] = counts.pop("all") - counts["test"]
    val = counts.get("val") or max(classes, round(0.2 * counts["train"]))
    train = counts["train"] if "val" in counts else counts["train"] - val
    return {"train": max(train, 1), "val": val, "test": counts["test"]}


def add_folder_datasets(registry, text: str, skip_bad: bool = False) -> str:
    """Register each ``folder:NAME=PATH`` item of a ``--datasets`` list as dataset NAME
    (plugin ``tlbench:folder``) and return the list with NAME in its place."""
    from tlbench import __version__

    names = []
    for part in [p.strip() for p in text.split(",")]:
        if part.startswith("folder:"):
            request = FolderRequest.parse(part, skip_bad)
            registry.add("datasets", folder_spec(request), PLUGIN, f"tlbench {__version__}")
            part = request.name
        names.append(part)
    return ",".join(names)
