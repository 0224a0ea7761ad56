"""Domain adaptation on the device, one batch at a time.

uint8 images -> float in [0, 1] -> resize to the cell's resolution -> 1 to 3 channels
-> the backbone's own mean/std.  Batched tensor ops only: no PIL, no per-sample Python.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


class BatchAdapter:
    """Turns a uint8 batch [B,H,W] or [B,H,W,C] into a normalized [B,3,R,R] float batch."""

    def __init__(
        self,
        resolution: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        channels_last: bool = False,
    ):
        self.resolution = resolution
        # Fold /255 and the normalization into one multiply-add: x*scale + shift.
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.scale.device, non_blocking=True)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        x = x.float()
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(
                x,
                size=(self.resolution, self.resolution),
                mode="bilinear",
                align_corners=False,
                antialias=x.shape[-1] > self.resolution,
            )
        # One pass: 1 -> 3 channels by broadcasting, normalized, written in the memory
        # format the model wants (no expand/multiply/add/copy temporaries).
        n, _, h, w = x.shape
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty((n, 3, h, w), device=x.device, memory_format=layout)
        return torch.addcmul(self.shift, x, self.scale, out=out)


class RandomShift:
    """Random translation by up to ``pixels`` of the raw uint8 batch, zero-padded.

    ``RandomCrop(side, padding=pixels)`` done for a whole batch on the device with one
    gather; seeded, so a cell stays reproducible.  The frozen prefix then sees new
    inputs every epoch, so a cell with augmentation cannot use the feature cache.
    """

    def __init__(self, pixels: int, device: torch.device, seed: int):
        self.pixels = pixels
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @classmethod
    def parse(cls, spec: str, device: torch.device, seed: int) -> RandomShift:
        """``shift`` (2 px) or ``shift:N``; the text a cell's settings store."""
        from tlbench.api.errors import TlbenchError

        kind, _, arg = spec.partition(":")
        digits = (arg or "2").isascii() and (arg or "2").isdigit()
        if kind != "shift" or not digits or not 0 < int(arg or "2") <= 64:
            raise TlbenchError(
                f"--augment {spec!r} is not supported: use shift or shift:N (N in 1..64 "
                "pixels of the raw image), or none."
            )
        return cls(int(arg or "2"), device, seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        p, (n, h, w) = self.pixels, images.shape[:3]
        padded = F.pad(images.movedim((1, 2), (-2, -1)), (p, p, p, p)).movedim((-2, -1), (1, 2))
        dy, dx = torch.randint(
            0, 2 * p + 1, (2, n, 1), device=images.device, generator=self.generator
        )
        rows = (dy + torch.arange(h, device=images.device))[:, :, None]
        cols = (dx + torch.arange(w, device=images.device))[:, None, :]
        return padded[torch.arange(n, device=images.device)[:, None, None], rows, cols]
