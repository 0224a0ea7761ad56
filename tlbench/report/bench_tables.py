"""BENCHMARKS.md's "Performance" section, rendered from ``results/bench/*.json``.

Each file is the ``--save`` output of one ``tlbench bench`` run: the numbers come from the
command, with its device and settings inside.  Kept free of torch imports: the
leaderboard renders it.
"""

from __future__ import annotations

import json
from pathlib import Path

INTRO = """## Performance: tlbench vs the naive pipeline (`tlbench bench`)

Generated from `results/bench/*.json`, each written by the `tlbench bench ... --save
results/bench` command listed under the table. One process runs the same cell twice:

- **naive**: the seeds' pipeline: a Dataset that makes one PIL image per sample,
  `Resize(R) + Grayscale(3) + ToTensor + Normalize(backbone mean/std)` per sample, a
  `DataLoader` (`num_workers` as listed), fp32, default memory format, plain `Adam`, the
  whole model (frozen backbone included) run on every batch of every epoch;
- **tlbench**: `Runner.run_cell`, the code path of every `tlbench run` cell: uint8 data on
  the device, batched adaptation, frozen-prefix feature cache (fresh: its fill is timed),
  per phase the memory layout measured faster (**layout**: per phase, with the trial's
  NCHW→NHWC img/s where both were timed; the trials are inside tlbench's wall time),
  fused Adam, fp32 on CPU (bf16 autocast on CUDA).

Both use the same backbone weights, head initialization, resolution, data subset, epochs,
batch, learning rate, seed and shuffled order, validate once per epoch, and report the
final model's accuracy on the same test subset. **Wall s** is end to end (model copy,
data pipeline, training, validation, test); dataset loading, the backbone build and a
short warm-up are outside both timings. **train img/s** = epochs × training images / wall
s. **GFLOP** = FLOPs each pipeline executed, counted with `FlopCounterMode` (matmuls and
convolutions, 2 per multiply-add; the backward pass of trained stages as really run; a
cached prefix counted once per image); **MFU** = executed FLOP/s / a fp32 (CPU) or bf16
(CUDA) matmul peak measured in the same process. **ceiling** = naive s / (tlbench's
executed FLOPs / that peak): the speedup tlbench would show at 100% MFU, the hardware's
limit for this work. **load** = 1-minute load average before
→ after the run: above the core count, other processes shared the CPU and the timings
are noisy.
"""


GPU_INTRO = """### GPU

`tlbench bench` on CUDA: tlbench's side runs bf16 autocast, NHWC and cuDNN autotuning
(`TLBENCH_CUDNN_BENCHMARK`); the naive side fp32 in the default layout (TF32 matmuls, as
the process allows them). **step img/s** = tlbench's steady-state training steps (the
first 2 of each phase and every evaluation excluded); **MFU** against the bf16 matmul peak
measured in the same process. Offline only efficientnet_lite0 has ImageNet weights here:
the resnets run with `--weights random` (the weights column). Raw stdout of the runs:
`results/bench/<device>-bench-run*.log`; one training step at batch 256, 224 px, bf16,
NHWC, repeated at one shape and profiled: `results/bench/<device>-profile-step.txt`
(`tools/cuda_profile_step.py`). A bench stopped at its time limit wrote no JSON: the logs
show which.
"""
# Issue 14's targets for an H100: steady training img/s per (backbone, strategy), and
# naive/tlbench for linear_probe.
STEP_TARGETS = {("resnet50", "full"): 5000, ("resnet18", "full"): 15000}
SPEEDUP_TARGETS = {"linear_probe": 30.0}


def performance_markdown(directory: Path) -> str:
    """The section, or "" when ``directory`` holds no bench results."""
    results = [json.loads(path.read_text()) for path in sorted(Path(directory).glob("*.json"))]
    if not results:
        return ""
    gpu = [r for r in results if r.get("device_slug", "").startswith("cuda")]
    cpu = [r for r in results if r not in gpu]
    lines = [INTRO]
    if cpu:
        lines += ["### CPU", ""] if gpu else []
        lines += _block(cpu)
    if gpu:
        lines += ["", GPU_INTRO, *_block(gpu), "", "Targets (issue 14, H100):", ""]
        lines += _targets(gpu)
    return "\n".join(lines) + "\n"


def _block(results: list[dict]) -> list[str]:
    lines = [_table(results), "", "Commands:", ""]
    lines += [f"- `{r['command']}`" for r in results]
    notes = sorted({r["weights_note"] for r in results if r.get("weights_note")})
    return lines + (["", *[f"Note: {note}" for note in notes]] if notes else [])


def _targets(results: list[dict]) -> list[str]:
    lines = []
    for r in sorted(results, key=lambda r: (r["backbone"], r["strategy"])):
        where = f"{r['backbone']} {r['strategy']} ({r['device']}, {r['resolution']} px)"
        step = STEP_TARGETS.get((r["backbone"], r["strategy"]))
        if step is not None:
            rate = r["tlbench_step_images_per_second"]
            verdict = "met" if rate >= step else "missed"
            lines.append(f"- {where}: {rate:,.0f} training img/s, target ≥ {step:,}: {verdict}")
        speedup = SPEEDUP_TARGETS.get(r["strategy"])
        if speedup is not None:
            verdict = "met" if r["speedup"] >= speedup else "missed"
            lines.append(
                f"- {where}: naive / tlbench {r['speedup']:.2f}x, target ≥ {speedup:g}x: {verdict}"
            )
    return lines


def _table(results: list[dict]) -> str:
    header = (
        "| backbone | strategy | weights | device | px | epochs | train | naive s | tlbench s "
        "| speedup ↑ | ceiling | naive acc % | tlbench acc % | naive img/s | tlbench img/s "
        "| step img/s | feature cache | layout | MFLOP/img | naive GFLOP/s | tlbench GFLOP/s | MFU "
        "| load |"
    )
    rows = [header, _rule(header)]
    for r in sorted(results, key=lambda r: (r["device"], r["backbone"], r["strategy"])):
        rows.append(
            "| "
            + " | ".join(
                [
                    r["backbone"],
                    r["strategy"] + (" (--compile)" if r.get("compile") else ""),
                    r["weights"],
                    r["device"],
                    str(r["resolution"]),
                    str(r["epochs"]),
                    str(r["split_sizes"]["train"]),
                    f"{r['naive_seconds']:.1f}",
                    f"{r['tlbench_seconds']:.1f}",
                    f"{r['speedup']:.2f}x",
                    f"{speedup_ceiling(r):.2f}x",
                    f"{r['naive_accuracy']:.2f}",
                    f"{r['tlbench_accuracy']:.2f}",
                    f"{r['naive_train_images_per_second']:,.0f}",
                    f"{r['tlbench_train_images_per_second']:,.0f}",
                    f"{r['tlbench_step_images_per_second']:,.0f}",
                    r["feature_cache"],
                    _layout(r),
                    f"{r['flops_per_image'] / 1e6:,.1f}",
                    f"{r['naive_flops_per_second'] / 1e9:,.1f}",
                    f"{r['tlbench_flops_per_second'] / 1e9:,.1f}",
                    f"{r['mfu']:.1%}",
                    " → ".join(f"{v:g}" for v in r.get("load_average", [])) or "–",
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def speedup_ceiling(r: dict) -> float:
    """naive seconds / the seconds tlbench's executed FLOPs take at 100% of the peak: the
    most any schedule of this work could gain on this device (work it skips aside)."""
    return r["naive_seconds"] * r["peak_flops_per_second"] / r["tlbench_flops"]


def _layout(r: dict) -> str:
    """Per phase: nchw/nhwc and, where both were timed, nchw→nhwc trial img/s."""
    if "memory_format" not in r:  # files written before layouts were chosen per phase
        return "nhwc" if r.get("channels_last") else "nchw"
    parts = []
    for label, rates in zip(
        r["memory_format"].split(","), r.get("memory_format_rates") or [], strict=False
    ):
        trial = f" ({rates['nchw']:,.0f}→{rates['nhwc']:,.0f})" if rates else ""
        parts.append(label.split(":")[0] + trial)
    return ", ".join(parts)


def _rule(header: str) -> str:
    return "|" + " --- |" * (header.count("|") - 1)


def main_job_markdown(output: Path) -> str:
    """The main job's cells timed before and after: ``output``/mainjob/before and
    ``output``/mainjob/after each hold a ``records.jsonl`` of that run and a ``run.json``
    saying which code and command (other runs there, e.g. ``halving``, are the README's)."""
    runs = [
        (json.loads((d / "run.json").read_text()), _cells(d / "records.jsonl"))
        for d in (Path(output) / "mainjob" / "before", Path(output) / "mainjob" / "after")
        if (d / "run.json").is_file() and (d / "records.jsonl").is_file()
    ]
    if len(runs) != 2:
        return ""
    (before, old), (after, new) = runs
    lines = [
        "### The main job, before and after",
        "",
        f"The embedded default's ten cells, computed from scratch twice on one machine, one "
        f"run after the other ({after['environment']}). Before: `{before['command']}` at "
        f"{before['label']}; after: `{after['command']}` ({after['label']}). Cell wall "
        "seconds are the records' `wall_seconds`; the process wall time also holds data "
        "loading, model builds and the leaderboard.",
        "",
        "| dataset | strategy | before s | after s | before / after | before acc % | after acc % |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in new.items():
        o = old[key]
        lines.append(
            f"| {key[0]} | {key[1]} | {o['wall_seconds']:.1f} | {r['wall_seconds']:.1f} | "
            f"{o['wall_seconds'] / r['wall_seconds']:.2f}x | {o['final_accuracy']:.2f} | "
            f"{r['final_accuracy']:.2f} |"
        )
    cells_before = sum(r["wall_seconds"] for r in old.values())
    cells_after = sum(r["wall_seconds"] for r in new.values())
    lines.append(
        f"| all cells | | {cells_before:.1f} | {cells_after:.1f} | "
        f"{cells_before / cells_after:.2f}x | | |"
    )
    lines.append(
        f"| process wall | | {before['process_wall_seconds']:.1f} | "
        f"{after['process_wall_seconds']:.1f} | "
        f"{before['process_wall_seconds'] / after['process_wall_seconds']:.2f}x | | |"
    )
    return "\n".join(lines) + "\n"


def _cells(path: Path) -> dict:
    """(dataset, strategy) -> record; the foundation called the reference row ``full``
    with random weights and ``partial`` meant ``partial:2``: named as now."""
    cells = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        strategy = "scratch" if r["weights"] == "random" else r["strategy"]
        cells[(r["dataset"], "partial:2" if strategy == "partial" else strategy)] = r
    return cells
