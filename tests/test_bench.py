"""``tlbench bench`` and what it rests on: FLOP counts, the JSON contract, OOM retry."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import tlbench.perf.bench as bench
from tlbench.api.model import StagedModel
from tlbench.api.specs import Phase
from tlbench.cli.app import make_app
from tlbench.perf.bench import CONTRACT_KEYS, ModelFlops, PhaseWork, Work
from tlbench.perf.flops import count_flops, matmul_peak, model_flops, train_step_flops
from tlbench.report import leaderboard

BENCH = [
    "bench",
    "--backbone",
    "tiny",
    "--dataset",
    "synth",
    "--resolution",
    "16",
    "--epochs",
    "1",
    "--train-size",
    "100",
    "--val-size",
    "50",
    "--test-size",
    "50",
    "--json",
]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny workloads on a shared 2-core box: one thread avoids OpenMP oversubscription."""
    monkeypatch.setattr("tlbench.train.device.available_cores", lambda: 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_linear_layer_flops_are_two_per_multiply_add():
    layer = nn.Linear(300, 70)
    assert count_flops(lambda: layer(torch.zeros(1, 300))) == 2 * 300 * 70
    assert count_flops(lambda: layer(torch.zeros(5, 300))) == 5 * 2 * 300 * 70


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_convolution_backward_counts_each_gradient_once_per_multiply_add(groups):
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=groups)
    x = torch.zeros(2, 16, 8, 8, requires_grad=True)
    forward = 2 * 2 * 16 * (16 // groups) * 9 * 64  # 2 * batch * out * in/groups * k^2 * HW
    assert count_flops(lambda: conv(x)) == forward
    out = conv(x)
    assert count_flops(lambda: out.sum().backward()) == 2 * forward  # input and weight grads


def test_training_a_head_alone_counts_forward_and_weight_gradient_only():
    model = StagedModel([nn.Sequential(nn.Flatten(), nn.Linear(12, 8))], 8, ["only"])
    model.set_head(10)
    assert model_flops(model, 2) == ModelFlops((2 * 12 * 8,), 2 * 8 * 10)
    first, flops = train_step_flops(model, Phase("head"), 2, 10)
    assert first == 1
    assert flops == 2 * (2 * 8 * 10)  # no input gradient: the features need none
    first, flops = train_step_flops(model, Phase("all", train_stages=[0]), 2, 10)
    assert first == 0  # head: fwd + weight + input grads; stage: fwd + weight grad
    assert flops == 3 * (2 * 8 * 10) + 2 * (2 * 12 * 8)
    assert all(p.requires_grad for p in model.parameters())  # the model was not touched


def test_executed_flops_credit_the_cache_with_one_prefix_pass():
    model = ModelFlops((100, 10), 1)
    sizes = {"train": 20, "val": 5, "test": 4}
    cached = PhaseWork(first=2, train_images=60, train_flops=3, evals=3, cached=True)
    work = Work(model, (cached,), sizes, best_checkpoint_pass=False)
    assert work.naive_flops() == 60 * (110 + 3) + 3 * 5 * 111 + 4 * 111
    assert work.tlbench_flops() == 60 * 3 + 3 * 5 * 1 + 25 * 110 + 4 * 111
    recomputed = Work(model, (PhaseWork(2, 60, 3, 3, cached=False),), sizes, False)
    assert recomputed.tlbench_flops() == recomputed.naive_flops()


def test_matmul_peak_is_positive_and_named():
    peak = matmul_peak(torch.device("cpu"), seconds=0.0, size=128)
    assert peak.flops_per_second > 0 and "fp32 matmul 128x128x128" in peak.method


def test_bench_json_has_the_contract_keys(tiny_plugin, monkeypatch):
    monkeypatch.setattr(bench, "PEAK_SIZE", 256)
    args = BENCH + ["--strategy", "partial:1", "--lr", "0.01", "--epochs", "2"]
    result = CliRunner().invoke(make_app(), args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(CONTRACT_KEYS) <= set(data)
    for key in ("naive_accuracy", "tlbench_accuracy", "speedup", "mfu", "flops_per_image"):
        assert math.isfinite(data[key]), key
    assert 0 <= data["naive_accuracy"] <= 100 and 0 <= data["tlbench_accuracy"] <= 100
    assert data["flops_per_image"] > 0 and 0 < data["mfu"] < 1
    ceiling = data["naive_seconds"] * data["peak_flops_per_second"] / data["tlbench_flops"]
    assert data["speedup_ceiling"] == pytest.approx(ceiling, rel=1e-3)
    assert data["speedup"] <= data["speedup_ceiling"]  # the same statement as MFU <= 1
    assert data["memory_format"].endswith(":measured") and data["memory_format_rates"][0]
    assert data["device"].startswith("cpu")
    assert data["feature_cache"] == "device"  # partial:1 serves stages 0-1 from the cache
    assert data["split_sizes"] == {"train": 100, "val": 50, "test": 50}
    assert data["tlbench_flops"] < data["naive_flops"]  # the 2nd epoch skips the prefix


def test_bench_table_saved_file_and_performance_section(tiny_plugin, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "PEAK_SIZE", 256)
    assert "## Performance" not in leaderboard.build(tmp_path)  # no results/bench: no section
    save_to = tmp_path / "bench"
    args = [a for a in BENCH if a != "--json"] + ["--save", str(save_to), "--weights", "random"]
    result = CliRunner().invoke(make_app(), args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "naive / tlbench" in result.stdout
    (saved,) = save_to.glob("*.json")
    assert saved.name == "cpu-1core-tiny-linear_probe-synth-16px.json"
    data = json.loads(saved.read_text())
    assert data["weights"] == "random" and data["command"].startswith("tlbench bench")
    board = leaderboard.build(tmp_path)
    assert "## Performance" in board and data["command"] in board
    assert "| tiny | linear_probe | random |" in board


def test_main_job_before_and_after_table(tmp_path):
    from tlbench.report.bench_tables import main_job_markdown

    def run(label: str, seconds: dict, strategy_names: dict) -> None:
        folder = tmp_path / "mainjob" / label
        folder.mkdir(parents=True)
        meta = {"label": label, "command": f"tlbench run ({label})", "environment": "here"}
        meta["process_wall_seconds"] = sum(seconds.values()) + 10
        (folder / "run.json").write_text(json.dumps(meta))
        rows = [
            {"dataset": "mnist", "strategy": strategy_names.get(s, s), "final_accuracy": 90.0,
             "weights": "random" if s == "scratch" else "imagenet", "wall_seconds": w}
            for s, w in seconds.items()
        ]  # fmt: skip
        (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert main_job_markdown(tmp_path) == ""
    run("before", {"partial:2": 30.0, "scratch": 60.0}, {"partial:2": "partial", "scratch": "full"})
    run("after", {"partial:2": 10.0, "scratch": 30.0}, {})
    table = main_job_markdown(tmp_path)
    assert "| mnist | partial:2 | 30.0 | 10.0 | 3.00x |" in table  # old names mapped
    assert "| mnist | scratch | 60.0 | 30.0 | 2.00x |" in table
    assert "| all cells | | 90.0 | 40.0 | 2.25x |" in table
    assert "| process wall | | 100.0 | 50.0 | 2.00x |" in table


def test_performance_section_splits_cpu_and_gpu_and_checks_targets(tmp_path):
    from pathlib import Path

    from tlbench.report.bench_tables import performance_markdown

    bench_dir = Path(__file__).parent.parent / "results" / "bench"
    cpu = json.loads((bench_dir / "cpu-2core-resnet18-full-mnist-64px.json").read_text())
    gpu = json.loads(
        (bench_dir / "cuda-nvidia-h100-80gb-hbm3-resnet50-full-fashion-224px.json").read_text()
    )
    (tmp_path / "a.json").write_text(json.dumps(cpu))
    (tmp_path / "b.json").write_text(json.dumps({**gpu, "tlbench_step_images_per_second": 5001}))
    (tmp_path / "c.json").write_text(json.dumps({**gpu, "backbone": "resnet18"}))
    text = performance_markdown(tmp_path)
    cpu_part, gpu_part = text.split("### GPU")
    assert "### CPU" in cpu_part and "cpu (2 cores" in cpu_part and "H100" not in cpu_part
    assert "cpu (2 cores" not in gpu_part.split("Targets")[0]
    assert "resnet50 full (NVIDIA H100 80GB HBM3, 224 px): 5,001 training img/s" in gpu_part
    assert "target ≥ 5,000: met" in gpu_part
    assert "1,907 training img/s, target ≥ 15,000: missed" in gpu_part
    only_cpu = tmp_path / "cpu"
    only_cpu.mkdir()
    (only_cpu / "a.json").write_text(json.dumps(cpu))
    assert "### CPU" not in performance_markdown(only_cpu)  # no heading without a GPU part
