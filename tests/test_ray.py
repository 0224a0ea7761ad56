"""``--executor ray`` on a real local Ray runtime (2 CPUs), with the tiny test backbone.

One runtime serves the whole module (starting one costs ~20 s on the 2-core reference
machine); in-process runs join it because Ray is already initialized, subprocess runs
with ``--ray-address``.  Ray workers import the test plugins from tests/ (PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
from helpers.cli import (
    TINY_RUN,
    read_records,
    records_path,
    run_main,
    skip_pictures,
    subprocess_env,
    tiny_cli,
)
from helpers.ray_runtime import WorkerEvents, wait_for_line

from tlbench.plan.settings import Cell, make_settings
from tlbench.run.executors import RAY_MISSING
from tlbench.run.executors.groups import group_cells, group_rows

TESTS = Path(__file__).parent
FAKE_GPUS = 2  # a custom resource standing in for GPUs: the multi-GPU path without one

# Learns something in 3 epochs (test accuracies 29-60%, not all at chance), searches an LR
# per row (--lr auto), and has two groups (imagenet and the random-init reference row).
LEARNING = ["--lr", "auto", "--batch-size", "16", "--epochs", "3", "--seeds", "2"]
SAME_RUN = TINY_RUN + ["--strategies", "linear_probe", "--reference"] + LEARNING
THREE = TINY_RUN + ["--strategies", "linear_probe,full,two_stage"]  # one group, 3 cells
RAY = ["--executor", "ray"]

pytestmark = pytest.mark.slow  # a local Ray runtime per test: seconds each


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'tlbench[ray]'")
    paths = [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    # workers see tests/; they run at the driver's priority (Ray's default is nice 15)
    env = {"PYTHONPATH": os.pathsep.join(p for p in paths if p), "RAY_worker_niceness": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _start(ray)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _start(ray) -> None:
    """A local runtime; tried twice: on a loaded 2-core machine the raylet can miss Ray's
    fixed 30 s registration deadline once (seen with a load average of 14)."""
    options = dict(num_cpus=2, resources={"fake_gpu": FAKE_GPUS}, include_dashboard=False)
    try:
        ray.init(**options, log_to_driver=False)
    except Exception:  # noqa: BLE001 - "The current node timed out during startup"
        ray.shutdown()
        ray.init(**options, log_to_driver=False)


@pytest.fixture
def no_pictures(monkeypatch):
    skip_pictures(monkeypatch)


def output(tmp_path: Path, name: str) -> list[str]:
    return ["--output", str(tmp_path / name), "--benchmarks", str(tmp_path / name / "B.md")]


def records_in(tmp_path: Path, name: str) -> dict[str, dict]:
    path = tmp_path / name / "t" / "records.jsonl"
    return {r["config_hash"]: r for r in map(json.loads, path.read_text().splitlines())}


# What must not depend on where a cell ran: every number but the timings.
RESULT_KEYS = (
    "status",
    "final_accuracy",
    "best_val_accuracy",
    "best_val_test_accuracy",
    "test_correct",
    "curve",
    "confusion",
    "epochs_to_threshold",
    "lr_chosen",
    "trainable_params",
    "trainable_params_per_phase",
    "freeze_verified",
)
CLOSE_KEYS = ("ece", "confidence_correct", "confidence_wrong")


def test_ray_records_equal_the_serial_records(
    ray_address, tiny_plugin, no_pictures, monkeypatch, tmp_path
):
    """Tolerance: none. Every number but the timings is equal: accuracies, per-image
    correctness, curves, confusion matrices, the LR search's candidates, ECE.

    The memory layout is fixed (NCHW) on both sides: tlbench otherwise picks NCHW or NHWC
    per phase by timing trials, which can choose differently from run to run (seen: the
    serial run kept NCHW, the Ray worker NHWC) and then ECE differs by ~2e-4 (measured:
    0.267208 vs 0.267374) while accuracies and per-image predictions stay equal.  Thread
    counts differ (serial 2, each Ray worker 1) and did not change any number here.
    """
    monkeypatch.setenv("TLBENCH_CHANNELS_LAST", "0")  # the layout is measured otherwise
    serial = run_main(SAME_RUN + output(tmp_path, "serial"))
    ray = run_main(SAME_RUN + RAY + output(tmp_path, "ray"))
    assert serial.code == 0 and ray.code == 0, serial.err + ray.err
    a, b = records_in(tmp_path, "serial"), records_in(tmp_path, "ray")
    assert set(a) == set(b) and len(a) == 4
    for key, record in a.items():
        for name in RESULT_KEYS:
            assert b[key][name] == record[name], (record["strategy"], record["seed"], name)
        for name in CLOSE_KEYS:
            assert b[key].get(name) == record.get(name), name
        searched, reused = record["lr_search"], b[key]["lr_search"]
        assert [c["val_accuracy"] for c in reused["candidates"]] == [
            c["val_accuracy"] for c in searched["candidates"]
        ]
        assert reused["seed"] == searched["seed"] == 0  # seed 1 reused seed 0's choice
        assert "executor" not in record and b[key]["executor"]["name"] == "ray"
    assert len({r["final_accuracy"] for r in a.values()}) > 1  # not all at chance
    # the two groups ran on two workers, each group on one worker (its cache and LR warm)
    pids = {(r["weights"], r["executor"]["pid"]) for r in b.values()}
    assert len(pids) == 2 and len({pid for _, pid in pids}) == 2
    # the same leaderboard rows, timings aside
    assert _accuracy_table(tmp_path / "serial" / "B.md") == _accuracy_table(
        tmp_path / "ray" / "B.md"
    )
    assert "4 cells ran, 0 already recorded" in " ".join(ray.out.split())
    assert (
        "tlbench run summary" in ray.out and "✓ tiny / scratch [random] / synth / seed 1" in ray.out
    )


def _accuracy_table(path: Path) -> list[str]:
    """The leaderboard's table lines cut to the columns before the first timing."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| tiny")]
    return [" | ".join(line.split(" | ")[:4]) for line in lines]


def test_groups_keep_shared_work_on_one_worker(tiny_plugin):
    settings = make_settings(False, None, 2, epochs=1, batch_size=8, resolution=16)
    cells = [
        Cell("tiny", s, d, seed, w, 16, 95.0, settings)
        for d in ("synth", "other")
        for w in ("imagenet", "random", "pretrain:synth")
        for s in ("linear_probe", "full")
        for seed in (0, 1)
    ]
    groups = group_cells(cells)
    # per (backbone, weights, dataset); pretrain: weights across target datasets
    assert [len(g) for g in groups] == [8, 4, 4, 4, 4]
    for group in groups:
        rows = [c.row_hash for c in group]
        assert rows == sorted(rows, key=rows.index)  # a row's seeds together, in order
        for row in set(rows):  # the first seed (which searches the LR) first
            assert [c.seed for c in group if c.row_hash == row] == [0, 1]
    assert all(len({c.weights for c in g}) == 1 for g in groups)
    rows = group_rows(cells)  # the finer grouping: rows, pretrain: still per checkpoint
    assert [len(g) for g in rows] == [8] + [2] * 8
    assert all(len({c.row_hash for c in g}) == 1 for g in rows[1:])


def test_without_ray_the_ray_executor_is_a_one_line_error(tiny_plugin, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = run_main(TINY_RUN + RAY + output(tmp_path, "r"))
    assert result.code == 2
    assert result.err_lines() == [f"error: {RAY_MISSING}"]
    assert "pip install 'tlbench[ray]'" in RAY_MISSING
    assert not (tmp_path / "r").exists()


def test_a_killed_worker_fails_its_cell_the_run_goes_on_and_a_rerun_completes_it(
    ray_address, tiny_plugin, no_pictures, monkeypatch, tmp_path
):
    import tlbench.plugins.registry as registry

    events = tmp_path / "events"
    with_tiny = registry.get_plugin_manager

    def with_events(load_entry_points: bool = True):
        pm = with_tiny(load_entry_points)
        pm.register(WorkerEvents(events, hang_at=2), name="tests:events")
        return pm

    monkeypatch.setattr(registry, "get_plugin_manager", with_events)
    killed = {}

    def kill_the_hanging_worker():
        try:
            words = wait_for_line(events, "hang 2", timeout=600)
        except BaseException:  # noqa: BLE001 - stop the run instead of hanging with it
            os.kill(os.getpid(), signal.SIGINT)
            raise
        killed["pid"] = int(words[2])
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_hanging_worker, daemon=True)
    killer.start()
    result = run_main(THREE + RAY + output(tmp_path, "results"))
    killer.join(timeout=5)

    assert result.code == 1, result.out + result.err
    records = read_records(tmp_path)
    assert [r["strategy"] for r in records] == ["linear_probe", "full", "two_stage"]
    died = records[1]
    assert died["status"] == "failed" and died["strategy"] == "full"
    assert died["error"].startswith(
        f"WorkerDied: the Ray worker running this cell (pid {killed['pid']}"
    )
    assert "The next `tlbench run` runs this cell again." in died["error"]
    assert records[0]["executor"]["pid"] == killed["pid"]
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert records[2]["executor"]["pid"] != killed["pid"]  # the group went on, elsewhere
    out = " ".join(result.out.split())
    assert "2 cells ran" not in out and "3 cells ran" in out and "1 failed" in out
    assert "failed: tiny / full / synth / seed 0: WorkerDied" in out

    monkeypatch.setattr(registry, "get_plugin_manager", with_tiny)
    before = records_path(tmp_path).read_bytes()
    again = run_main(THREE + RAY + output(tmp_path, "results"))
    assert again.code == 0, again.out + again.err
    assert "1 cells ran, 2 already recorded" in " ".join(again.out.split())
    assert records_path(tmp_path).read_bytes().startswith(before)
    final = read_records(tmp_path)[-1]
    assert (final["strategy"], final["status"]) == ("full", "ok")


# ---------------------------------------------------------------- the driver dies


def start_driver_and_hang_in_third_cell(ray_address: str, synth_dir: Path, tmp_path: Path):
    """A subprocess driver on the shared runtime; returned once two records are stored
    and the third cell is training in a worker."""
    events = tmp_path / "events"
    env = subprocess_env(synth_dir, TLBENCH_TEST_EVENTS=str(events), TLBENCH_TEST_HANG_AT="3")
    args = THREE + RAY + ["--ray-address", ray_address] + output(tmp_path, "results")
    proc = tiny_cli(args, env)
    try:
        wait_for_line(events, "hang 3", timeout=600, proc=proc)
    except BaseException:
        proc.kill()
        raise
    return proc, env, args


def assert_two_ok_records(tmp_path: Path, before: bytes) -> None:
    assert records_path(tmp_path).read_bytes() == before, "finished records changed"
    lines = before.decode().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "ok" for line in lines)


def test_kill_9_of_the_driver_then_the_same_command_completes(ray_address, synth_dir, tmp_path):
    proc, env, args = start_driver_and_hang_in_third_cell(ray_address, synth_dir, tmp_path)
    before = records_path(tmp_path).read_bytes()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert_two_ok_records(tmp_path, before)

    env.pop("TLBENCH_TEST_HANG_AT")
    again = tiny_cli(args, env)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, out + err
    assert "1 cells ran, 2 already recorded" in " ".join(out.split())
    assert records_path(tmp_path).read_bytes().startswith(before)  # nothing lost or rewritten
    records = read_records(tmp_path)
    assert len({r["config_hash"] for r in records}) == len(records) == 3  # none duplicated
    assert sorted(r["strategy"] for r in records) == ["full", "linear_probe", "two_stage"]


def test_sigint_cancels_the_cells_in_flight_and_keeps_the_finished(
    ray_address, synth_dir, tmp_path
):
    proc, _, _ = start_driver_and_hang_in_third_cell(ray_address, synth_dir, tmp_path)
    before = records_path(tmp_path).read_bytes()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 128 + signal.SIGINT, out + err
    message = " ".join(err.split())
    assert "interrupted by SIGINT: abandoned the cells in flight (tiny / two_stage" in message
    assert "2 cells finished in this run and every finished record is kept" in message
    assert "To resume, run the same command again" in message and "Traceback" not in err
    assert_two_ok_records(tmp_path, before)


# ---------------------------------------------------------------- GPUs


def test_one_worker_per_gpu_with_a_custom_resource_standing_in_for_gpus(
    ray_address, tiny_plugin, tmp_path
):
    """The CUDA path on a machine without one: workers hold ``fake_gpu`` (the fixture's
    runtime has 2) instead of ``GPU``; everything else is the path a GPU run takes."""
    from helpers.tiny_run import tiny_cells_runner

    from tlbench.run.executors.ray_cluster import RayExecutor

    runner, imagenet = tiny_cells_runner(tmp_path, "linear_probe", seeds=(0, 1))
    _, random = tiny_cells_runner(tmp_path, "linear_probe", weights="random", seeds=(0, 1))
    executor = RayExecutor(gpu_resource="fake_gpu", cuda=True)
    outcome = executor.run(runner, imagenet + random)

    assert executor.shape.count == FAKE_GPUS
    assert executor.shape.options == {"resources": {"fake_gpu": 1}, "num_cpus": 0}
    assert [r["status"] for r in outcome.ran] == ["ok"] * 4
    held = {r["weights"]: r["executor"] for r in outcome.ran}
    assert all(e["resources"] == {"fake_gpu": 1.0} for e in held.values())
    assert held["imagenet"]["pid"] != held["random"]["pid"]  # one worker per "GPU"
    assert len(read_lines(tmp_path / "records.jsonl")) == 4


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_worker_shape_one_per_gpu_or_per_cpu_share():
    from tlbench.api.errors import TlbenchError
    from tlbench.run.executors.ray_cluster import worker_shape

    eight = worker_shape({"CPU": 64.0, "GPU": 8.0}, cuda=True, groups=30)
    assert (eight.count, eight.options) == (8, {"num_gpus": 1, "num_cpus": 0})
    assert worker_shape({"CPU": 64.0, "GPU": 8.0}, cuda=True, groups=3).count == 3
    cpu = worker_shape({"CPU": 16.0}, cuda=False, groups=30, cpus=4)
    assert (cpu.count, cpu.options, cpu.threads) == (4, {"num_cpus": 4}, 4)
    with pytest.raises(TlbenchError, match="has no GPU for CUDA cells"):
        worker_shape({"CPU": 4.0}, cuda=True, groups=2)
