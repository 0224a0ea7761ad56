"""``tlbench bench``'s result: one JSON object (the cell, both pipelines' times and
FLOPs, how to repeat it), and the file it is saved to."""

from __future__ import annotations

import json
import platform
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from tlbench.store.safeio import atomic_write
from tlbench.train.device import DeviceInfo, available_cores

if TYPE_CHECKING:
    from tlbench.perf.bench import BenchRequest, Work
    from tlbench.perf.naive import NaiveResult
    from tlbench.plan.settings import Cell

FLOPS_NOTE = (
    "FlopCounterMode counts of matmuls and convolutions (2 per multiply-add), "
    "forward and the backward of the trained stages as really run; elementwise "
    "ops not counted; each pipeline's executed work over its own wall seconds."
)
TIMED_NOTE = (
    "end to end: model copy, data pipeline, training, per-epoch validation, test; "
    "untimed for both: dataset load, backbone build, warm-up"
)


def summarize(
    request: BenchRequest,
    cell: Cell,
    hw: DeviceInfo,
    note: Optional[str],
    naive: NaiveResult,
    record: dict,
    tlbench_seconds: float,
    work: Work,
    peak,
) -> dict:
    """The saved result: the cell and machine, then both pipelines' times, then FLOPs."""
    return {
        **_setup(request, cell, hw, note, record, work),
        **_times(cell, naive, record, tlbench_seconds, work),
        **_flops(naive, tlbench_seconds, work, peak),
        "timed": TIMED_NOTE,
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            **record.get("versions", {}),
        },
        "request": asdict(request),
        "command": command_line(request),
    }


def _setup(request, cell: Cell, hw: DeviceInfo, note, record: dict, work: Work) -> dict:
    """What ran where: the cell's settings, the data and the machine."""
    return {
        "backbone": cell.backbone,
        "strategy": cell.strategy,
        "dataset": cell.dataset,
        "weights": cell.weights,
        "weights_source": record.get("weights_source"),
        "weights_note": note,
        "resolution": cell.resolution,
        "epochs": cell.settings.epochs,
        "batch_size": record["batch_size"],
        "lr": cell.settings.lr,
        "seed": cell.seed,
        "split_sizes": work.sizes,
        "data_source": record.get("data_source"),
        "device": hw.name,
        "device_slug": hw.slug,
        "threads": torch.get_num_threads(),
        "cores": available_cores(),
        "memory_format": record.get("memory_format"),
        "memory_format_rates": record.get("memory_format_rates"),
        "inference_batch": record.get("inference_batch"),
        "compile": request.compile,
        "naive_num_workers": request.num_workers,
    }


def _times(cell: Cell, naive: NaiveResult, record: dict, seconds: float, work: Work) -> dict:
    """Both pipelines' wall seconds, accuracies and image rates."""
    trained = cell.settings.epochs * work.sizes["train"]
    return {
        "naive_seconds": round(naive.seconds, 3),
        "tlbench_seconds": round(seconds, 3),
        "speedup": round(naive.seconds / seconds, 3),
        "naive_accuracy": round(naive.accuracy, 4),
        "tlbench_accuracy": record["final_accuracy"],
        "accuracy_delta": round(record["final_accuracy"] - naive.accuracy, 4),
        "naive_train_images_per_second": round(trained / naive.seconds, 2),
        "tlbench_train_images_per_second": round(trained / seconds, 2),
        "naive_step_images_per_second": round(naive.train_images / naive.train_seconds, 2),
        "tlbench_step_images_per_second": record["train_throughput"],
        "feature_cache": record["feature_cache"],
    }


def _flops(naive: NaiveResult, tlbench_seconds: float, work: Work, peak) -> dict:
    """Executed FLOPs of each pipeline, their rates, and the MFU against ``peak``."""
    naive_flops, tlbench_flops = work.naive_flops(), work.tlbench_flops()
    naive_rate = naive_flops / naive.seconds
    tlbench_rate = tlbench_flops / tlbench_seconds
    return {
        "flops_per_image": work.model.forward,
        "train_flops_per_image": [p.train_flops for p in work.phases],
        "naive_flops": naive_flops,
        "tlbench_flops": tlbench_flops,
        "naive_flops_per_second": round(naive_rate),
        "tlbench_flops_per_second": round(tlbench_rate),
        "peak_flops_per_second": round(peak.flops_per_second),
        "peak_method": peak.method,
        "naive_mfu": round(naive_rate / peak.flops_per_second, 5),
        "mfu": round(tlbench_rate / peak.flops_per_second, 5),
        "flops_note": FLOPS_NOTE,
    }


def command_line(request: BenchRequest) -> str:
    """The ``tlbench bench`` command that repeats ``request``, every setting spelled out."""
    words = ["tlbench", "bench"]
    for name, value in asdict(request).items():
        flag = "--" + ("compile" if name == "compile" else name.replace("_", "-"))
        if name == "compile":
            words += [flag] if value else []
        elif value is not None and not (name == "device" and value == "auto"):
            words += [flag, str(value)]
    return shlex.join(words)


def result_filename(result: dict) -> str:
    """e.g. ``cpu-2core-efficientnet_lite0-linear_probe-mnist-64px.json`` (``-compile``
    before ``.json`` with ``--compile``)."""
    strategy = result["strategy"].replace(":", "")
    compiled = "-compile" if result.get("compile") else ""
    return (
        f"{result['device_slug']}-{result['backbone']}-{strategy}-{result['dataset']}-"
        f"{result['resolution']}px{compiled}.json"
    )


def save(result: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / result_filename(result)
    return atomic_write(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
