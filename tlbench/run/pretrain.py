"""``--weights pretrain:<dataset>``: a backbone trained here, from random init, on a source.

The STL-10 -> MNIST seed's method, made offline: every architecture gets a transfer
experiment without downloading ImageNet weights.  The source run is ``full`` fine-tuning
from a seeded random init with the target run's own settings (epochs, batch, LR, sizes,
resolution).  Its backbone (stages only; the source head is dropped) goes to a local model
cache keyed by everything that shaped it, so every strategy and seed of the target, and
later runs, reuse one checkpoint instead of retraining.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tlbench import __version__
from tlbench.api import env
from tlbench.api.errors import TlbenchError
from tlbench.api.model import StagedModel
from tlbench.api.specs import Phase
from tlbench.backbones.weights import WeightsChoice
from tlbench.plan.settings import Cell
from tlbench.store.safeio import atomic_write
from tlbench.train.state import Diverged, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.run.workspace import Workspace

PRETRAIN_LR = 1e-3  # under --lr auto: Adam at the usual whole-network LR, not searched
PRETRAIN_SEED = 0  # one source checkpoint serves every target seed (documented in README)
CACHE_FORMAT = 1  # bump when the checkpoint layout or the source recipe changes


def cache_dir() -> Path:
    """Source checkpoints, under tlbench's cache (tlbench.api.env.cache_dir)."""
    return env.cache_dir("models")


def source_cell(cell: Cell) -> Cell:
    """The source run behind ``cell``: same backbone, resolution and settings."""
    source = WeightsChoice.parse(cell.weights).path
    return dataclasses.replace(
        cell, strategy="full", dataset=source, seed=PRETRAIN_SEED, weights="random"
    )


def cache_key(cell: Cell) -> dict:
    """Everything that shapes the source checkpoint (threshold does not)."""
    source = source_cell(cell)
    key = {
        "format": CACHE_FORMAT,
        "backbone": source.backbone,
        "source": source.dataset,
        "resolution": source.resolution,
        "seed": source.seed,
        "recipe": "full from random init",
        "settings": dataclasses.asdict(source.settings),
    }
    weights_id = (cell.provenance or {}).get("weights_id")
    if weights_id:  # pretrain:<source>@<fingerprint of the source data> (tlbench.run.provenance)
        key["source_data"] = weights_id
    return key


def checkpoint_path(cell: Cell) -> Path:
    key = cache_key(cell)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['backbone']}-{key['source']}-{key['resolution']}px-{digest}.pt"


def pretrained_backbone(workspace: Workspace, cell: Cell) -> tuple[StagedModel, dict]:
    """The backbone for ``cell``, its stages loaded from the cached source checkpoint, and
    the source run's facts, which every target record carries.

    Trains and stores the checkpoint first when the cache does not hold it.
    """
    path = checkpoint_path(cell)
    info_path = path.with_suffix(".json")
    hit = path.exists() and info_path.exists()
    if not hit:
        train_source(workspace, cell, path)
    stored = json.loads(info_path.read_text())
    model = _random_backbone(workspace, cell)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.stages.load_state_dict(state)
    source = stored["source"]
    model.weights_source = (
        f"pretrained here on {source} ({stored['source_accuracy']:.2f}% source test "
        f"accuracy), {path.name}"
    )
    return model, {
        "pretrain_source": source,
        "pretrain_source_accuracy": stored["source_accuracy"],
        "pretrain_checkpoint": str(path),
        "pretrain_cache_hit": hit,
    }


def train_source(workspace: Workspace, cell: Cell, path: Path) -> None:
    """Train the source run and store its stages + a JSON sidecar (written last)."""
    source = source_cell(cell)
    splits, data_source = workspace.splits_for(source)
    dataset = workspace.dataset(source)
    model = _random_backbone(workspace, source)
    torch.manual_seed(PRETRAIN_SEED)
    model.set_head(dataset.num_classes, source.settings.head_hidden)
    model.to(workspace.device.device)
    phases = [Phase("all", train_stages=list(range(len(model.stages))))]  # full
    trainer = workspace.trainer_for(
        model, phases, splits, workspace.adapter(source), _config(workspace, source, dataset)
    )
    try:
        metrics = trainer.run()
    except Diverged as exc:
        raise TlbenchError(
            f"pretraining {cell.backbone} on {source.dataset} diverged at step {exc.step}; "
            "try a lower --lr."
        ) from None
    state = {k: v.detach().cpu() for k, v in model.stages.state_dict().items()}
    atomic_write(path, lambda f: torch.save(state, f))
    info = {
        "key": cache_key(cell),
        "source": source.dataset,
        "source_accuracy": metrics["final_accuracy"],
        "source_best_val_accuracy": metrics["best_val_accuracy"],
        "source_curve": metrics["curve"],
        "data_source": data_source,
        "split_sizes": splits.sizes(),
        "device": workspace.device.name,
        "tlbench": __version__,
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(info, indent=1, sort_keys=True).encode()
    atomic_write(path.with_suffix(".json"), text)


def _random_backbone(workspace: Workspace, cell: Cell) -> StagedModel:
    torch.manual_seed(PRETRAIN_SEED)
    return workspace.backbone_spec(cell).build(WeightsChoice("random"))


def _config(workspace: Workspace, cell: Cell, dataset) -> TrainConfig:
    """As a target cell is configured, but seeded with PRETRAIN_SEED, at the source
    dataset's threshold, with a constant LR and nothing cached (full training)."""
    s = cell.settings
    lr = s.lr if s.lr is not None else PRETRAIN_LR  # --lr auto: full's usual Adam LR
    config = workspace.train_config(
        cell, s.batch_size, lr, None, seed=PRETRAIN_SEED, threshold=dataset.default_threshold
    )
    return dataclasses.replace(config, schedule="constant")
