"""Device choice, thread count and synchronization: the hardware facts a cell needs."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch

from tlbench.errors import TlbenchError

# NHWC on the CPU, measured on 2 cores, 64 px, fp32, batch 64 (img/s NCHW -> NHWC):
#   efficientnet_lite0  forward 374 -> 661 (1.77x)   training step 64 -> 118 (1.84x)
#   resnet18            forward 305 -> 330 (1.08x)   training step 101 -> 85 (0.84x)
# oneDNN's depthwise convolutions are slow in NCHW; plain ones train faster in NCHW.
# So: NHWC whenever only forward passes run through the backbone, and for training only
# when the backbone has depthwise convolutions (see ``channels_last_for``).
# TLBENCH_CHANNELS_LAST=0/1 forces it off/on (CPU and CUDA).
CPU_CHANNELS_LAST = True


@dataclass(frozen=True)
class DeviceInfo:
    device: torch.device
    name: str  # human-readable, recorded in every record
    slug: str  # used in run names, e.g. "cpu-2core" or "cuda-nvidia-h100"
    channels_last: bool = False  # NHWC allowed here; per model: ``channels_last_for``

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_device(choice: str = "auto") -> DeviceInfo:
    """``auto`` picks CUDA when present, else CPU (with threads set to the cores we have)."""
    if choice not in ("auto", "cpu", "cuda"):
        raise TlbenchError(f"--device {choice!r} is not one of: auto, cpu, cuda.")
    if choice == "cuda" and not torch.cuda.is_available():
        raise TlbenchError("--device cuda was asked for but no CUDA device is available here.")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        name = torch.cuda.get_device_name(0)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return DeviceInfo(torch.device("cuda"), name, "cuda-" + _slug(name), _channels_last(True))
    cores = available_cores()
    torch.set_num_threads(cores)
    cpu = platform.processor() or platform.machine()
    name, slug = f"cpu ({cores} cores, {cpu})", f"cpu-{cores}core"
    return DeviceInfo(torch.device("cpu"), name, slug, _channels_last(CPU_CHANNELS_LAST))


def channels_last_for(info: DeviceInfo, model: torch.nn.Module, trains_backbone: bool) -> bool:
    """Whether ``model`` and its batches should be NHWC here (measurements above).

    CUDA: always (tensor cores want NHWC).  CPU: for forward-only work (frozen backbone,
    feature cache) and for training a backbone with depthwise convolutions.
    """
    forced = os.environ.get("TLBENCH_CHANNELS_LAST", "").strip()
    if forced:
        return forced not in ("0", "false", "no")
    if not info.channels_last:
        return False
    if info.is_cuda or not trains_backbone:
        return True
    return any(
        isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
        for m in model.modules()
    )


def _channels_last(default: bool) -> bool:
    text = os.environ.get("TLBENCH_CHANNELS_LAST", "").strip()
    return default if text == "" else text not in ("0", "false", "no")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())
