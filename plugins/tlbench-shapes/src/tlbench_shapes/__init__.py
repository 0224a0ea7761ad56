"""tlbench-shapes: a plain-torch backbone and an image-folder dataset, as a plugin.

Imports stay cheap (tlbench imports every plugin, even for ``tlbench list``): torch and
Pillow are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import BackboneSpec, DatasetSpec

__version__ = "0.1.0"

SHAPES = ("circle", "cross", "square", "triangle")
PER_CLASS = {"train": 60, "test": 15}


# ---------------------------------------------------------------- the backbone


def build_tinycnn(weights):
    """Three stages of plain torch modules; the last pools to 32 features."""
    import torch
    from torch import nn

    from tlbench.api.errors import TlbenchError
    from tlbench.api.model import StagedModel

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())

    model = StagedModel.from_modules(
        {
            "stem": block(3, 16),
            "mid": block(16, 32),
            "last": nn.Sequential(block(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        },
        num_features=32,
        weights=weights,  # weights_source: "random" or "file:<path>"
    )
    if weights.kind == "file":
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
        model.stages.load_state_dict(state)
    elif weights.kind != "random":
        raise TlbenchError(
            f"tinycnn has no {weights.label()!r} weights: use --weights tinycnn=random "
            "or a state-dict file."
        )
    return model


@hookimpl
def register_backbones(register):
    register(
        BackboneSpec(
            name="tinycnn",
            build=build_tinycnn,
            input_size=32,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            description="3-stage plain-torch CNN (random init or your checkpoint)",
            imagenet_sources=(),
            imagenet_unavailable=lambda: (
                "tinycnn has no ImageNet weights; use --weights tinycnn=random"
            ),
        )
    )


# ---------------------------------------------------------------- the dataset


def shapes_folder() -> Path:
    """The generated image folder: written once, then reused (and cached decoded)."""
    base = os.environ.get("TLBENCH_CACHE") or Path.home() / ".cache" / "tlbench"
    root = Path(base).expanduser() / "tlbench-shapes" / f"v{__version__}"
    if not (root / "done").exists():
        _draw_folder(root)
        (root / "done").write_text("ok\n")
    return root


def _draw_folder(root: Path) -> None:
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(0)
    for split, count in PER_CLASS.items():
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = rng.randint(28, 48)
                image = Image.new("RGB", (side, side), tuple(rng.randint(0, 60) for _ in "rgb"))
                draw = ImageDraw.Draw(image)
                a, b = side // 5, side - side // 5
                fill = tuple(rng.randint(170, 255) for _ in "rgb")
                if shape == "circle":
                    draw.ellipse((a, a, b, b), fill=fill)
                elif shape == "square":
                    draw.rectangle((a, a, b, b), fill=fill)
                elif shape == "triangle":
                    draw.polygon([(side // 2, a), (a, b), (b, b)], fill=fill)
                else:
                    w = side // 10
                    draw.rectangle((side // 2 - w, a, side // 2 + w, b), fill=fill)
                    draw.rectangle((a, side // 2 - w, b, side // 2 + w), fill=fill)
                image.save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")


def load_shapes(data_dir: Optional[str] = None):
    from tlbench.data.folder import FolderRequest, load_folder

    return load_folder(FolderRequest("shapes", shapes_folder(), side=32))


def probe_shapes(data_dir: Optional[str] = None) -> str:
    return "tlbench-shapes:generated (300 PNG/JPEG files, drawn on first use)"


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec(
            name="shapes",
            num_classes=len(SHAPES),
            load=load_shapes,
            probe=probe_shapes,
            description="four drawn shapes, 240 train / 60 test images, 32 px",
            class_names=SHAPES,
            default_threshold=90.0,
            default_sizes={"train": 200, "val": 40, "test": 60},  # what 300 images allow
        )
    )
