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
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x * self.scale + self.shift
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
