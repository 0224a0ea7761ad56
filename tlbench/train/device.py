"""Device choice, thread count and synchronization: the hardware facts a cell needs."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch

from tlbench.api import env
from tlbench.api.errors import TlbenchError

# NHWC may be chosen on the CPU (per phase, by measurement: tlbench.train.autotune).
CPU_CHANNELS_LAST = True


@dataclass(frozen=True)
class DeviceInfo:
    device: torch.device
    name: str  # human-readable, recorded in every record
    slug: str  # used in run names, e.g. "cpu-2core" or "cuda-nvidia-h100"
    channels_last: bool = False  # NHWC allowed here; per phase: tlbench.train.autotune

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
        torch.backends.cudnn.benchmark = cudnn_benchmark()
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return DeviceInfo(torch.device("cuda"), name, "cuda-" + _slug(name), True)
    cores = available_cores()
    torch.set_num_threads(cores)
    cpu = platform.processor() or platform.machine()
    name, slug = f"cpu ({cores} cores, {cpu})", f"cpu-{cores}core"
    return DeviceInfo(torch.device("cpu"), name, slug, CPU_CHANNELS_LAST)


def cudnn_benchmark() -> bool:
    """cuDNN autotuning: on, unless ``TLBENCH_CUDNN_BENCHMARK=0`` (or another no word).

    Autotuning runs again for every new input shape, and a cell runs many (the ragged
    last batch of each split, inference at twice the training batch, probes).  On an H100
    (results/bench/cuda-nvidia-h100-80gb-hbm3-*) tlbench's in-cell resnet50 steps ran at
    half the rate of the same steps repeated at one shape, and efficientnet_lite0 spent
    ~30 s outside its training steps; autotuning per shape is the suspect, not yet
    measured: ``tools/cuda_diag.py`` times both settings.
    """
    return env.cudnn_benchmark()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())
