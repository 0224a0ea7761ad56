"""Generate image folders of drawn shapes in mixed modes, sizes and formats.

Class c draws one shape (circle, square, triangle, cross) on a noisy background, so a
tiny CNN can learn it; each file gets a mode and a format in turn, covering what real
folders hold: grayscale, RGB, RGBA, palette, 1-bit and 16-bit PNG, JPEG, BMP, WEBP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "cross", "square", "triangle")  # sorted: the class order
VARIANTS = (  # (mode, suffix): the mix cycles through these
    ("RGB", ".png"),
    ("RGB", ".jpg"),
    ("L", ".png"),
    ("RGBA", ".png"),
    ("P", ".png"),
    ("I;16", ".png"),
    ("L", ".jpeg"),
    ("RGB", ".bmp"),
    ("RGB", ".webp"),
    ("1", ".png"),
)


def shape_image(shape: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    noise = rng.integers(0, 70, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    x0, y0 = (width - side) // 2 + side // 5, (height - side) // 2 + side // 5
    x1, y1 = x0 + 3 * side // 5, y0 + 3 * side // 5
    color = tuple(int(c) for c in rng.integers(180, 256, size=3))
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=color)
    else:
        w = max(2, side // 8)
        draw.rectangle(((x0 + x1) // 2 - w, y0, (x0 + x1) // 2 + w, y1), fill=color)
        draw.rectangle((x0, (y0 + y1) // 2 - w, x1, (y0 + y1) // 2 + w), fill=color)
    return image


def in_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":  # 16-bit grayscale: full 0..65535 range
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(gray)  # uint16 -> mode I;16
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    if mode == "RGBA":
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        return rgba
    return image.convert(mode)


def write_folder(
    root: Path,
    per_class: dict[str, int],
    seed: int = 0,
    sizes: tuple[int, int] = (24, 72),
    variants=VARIANTS,
) -> Path:
    """``root/<split>/<shape>/NNNN.<ext>`` for each ``split: count per class`` (a split
    named ``""`` writes the one-tree layout ``root/<shape>/...``)."""
    rng = np.random.default_rng(seed)
    k = 0
    for split, count in per_class.items():
        for shape in SHAPES:
            folder = root / split / shape if split else root / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                width, height = (int(v) for v in rng.integers(*sizes, size=2))
                mode, suffix = variants[k % len(variants)]
                k += 1
                image = in_mode(shape_image(shape, width, height, rng), mode)
                image.save(folder / f"{i:04d}{suffix}")
    return root
