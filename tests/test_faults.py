"""Faults during a run: each is injected, and no finished record may be lost or doubled.

In-process runs go through ``tlbench.cli.app.main`` (the console script's code path); the
signal and ``kill -9`` tests run the CLI as a real subprocess (``tests/helpers/tiny_cli.py``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers.cli import (
    TINY_RUN,
    output_args,
    read_records,
    records_path,
    run_main,
    skip_pictures,
    snapshot,
    subprocess_env,
    tiny_cli,
)
from helpers.faults import NAN_AFTER, OOM_LIMIT, FaultPlugin

from tlbench.store.records import CorruptRecordWarning, load_records


@pytest.fixture
def faults(tiny_plugin, monkeypatch):
    """The tiny plugin plus the faulty backbones and strategy of ``helpers.faults``."""
    import tlbench.plugins.registry as registry

    with_tiny = registry.get_plugin_manager

    def with_faults(load_entry_points: bool = True):
        pm = with_tiny(load_entry_points)
        pm.register(FaultPlugin(), name="tests:faults")
        return pm

    monkeypatch.setattr(registry, "get_plugin_manager", with_faults)


@pytest.fixture
def no_pictures(monkeypatch):
    skip_pictures(monkeypatch)


def by_cell(records: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["backbone"], r["strategy"]): r for r in records}


# ---------------------------------------------------------------- a cell that raises


def test_failing_cells_are_recorded_and_the_run_goes_on(faults, no_pictures, tmp_path):
    args = TINY_RUN + ["--backbones", "broken,tiny", "--strategies", "linear_probe,wrong_head"]
    result = run_main(args + output_args(tmp_path))

    assert result.code == 1, result.err
    cells = by_cell(read_records(tmp_path))
    assert cells[("tiny", "linear_probe")]["status"] == "ok"  # ran after the failures
    failed = {key: r for key, r in cells.items() if r["status"] == "failed"}
    assert set(failed) == {
        ("broken", "linear_probe"),
        ("broken", "wrong_head"),
        ("tiny", "wrong_head"),
    }
    assert failed[("broken", "linear_probe")]["error"] == "RuntimeError: plugin bug: build exploded"
    assert "shapes cannot be multiplied" in failed[("tiny", "wrong_head")]["error"]
    for record in failed.values():
        trace = Path(record["traceback_file"]).read_text()
        assert trace.startswith("Traceback") and record["error"].split(": ")[-1] in trace
        assert f"failed: {record['backbone']} / {record['strategy']}" in result.out
        assert record["traceback_file"] in result.out.replace("\n", "")
    assert "1 cells ran" not in result.out and "3 failed" in result.out

    again = run_main(args + output_args(tmp_path))  # failed cells are retried, ok ones kept
    assert again.code == 1 and "1 already recorded" in again.out
    assert len(read_records(tmp_path)) == 4 + 3


# ---------------------------------------------------------------- NaN / inf loss


def test_nan_loss_stops_the_cell_early_as_diverged(faults, tmp_path):
    """Also the one fault test that renders the leaderboard's pictures: a non-ok record."""
    args = TINY_RUN + ["--backbones", "nan_after_5,tiny", "--strategies", "full"]
    args += ["--batch-size", "50"] + output_args(tmp_path)
    result = run_main(args)

    assert result.code == 0, result.err  # diverged is a result, not a failure
    cells = by_cell(read_records(tmp_path))
    record = cells[("nan_after_5", "full")]
    total_steps = 2 * 4  # 2 epochs x 200 images / batch 50; an evaluation every step
    assert record["status"] == "diverged"
    assert record["diverged_at_step"] == NAN_AFTER + 1 < total_steps
    assert record["error"] == f"loss became NaN/inf at step {NAN_AFTER + 1}"
    assert cells[("tiny", "full")]["status"] == "ok"
    assert "diverged" in result.out
    assert "2 already recorded" in run_main(args).out  # diverged counts as finished


def test_lr_that_would_diverge_is_rejected_up_front(tiny_plugin, tmp_path):
    result = run_main(TINY_RUN + ["--lr", "1e30"] + output_args(tmp_path))
    assert result.code == 2 and "--lr '1e30' is invalid" in result.err


# ---------------------------------------------------------------- CUDA out of memory


def test_oom_halves_the_batch_and_records_the_batch_that_ran(faults, no_pictures, tmp_path):
    args = TINY_RUN + ["--backbones", "oom_over_16", "--strategies", "full"]
    result = run_main(args + ["--batch-size", "64"] + output_args(tmp_path))

    assert result.code == 0, result.out + result.err
    (record,) = read_records(tmp_path)
    assert record["status"] == "ok"
    assert record["config"]["batch_size"] == 64  # asked for
    assert record["batch_size"] == OOM_LIMIT  # ran: 64 -> 32 -> 16


def test_oom_at_every_batch_size_fails_with_the_reason(faults, no_pictures, tmp_path):
    args = TINY_RUN + ["--backbones", "oom_always", "--strategies", "full"]
    result = run_main(args + ["--batch-size", "4"] + output_args(tmp_path))

    assert result.code == 1
    (record,) = read_records(tmp_path)
    assert record["status"] == "failed"
    assert record["error"].startswith(
        "OutOfMemory: out of memory at every batch size tried (4, 2, 1): CUDA out of memory."
    )
    assert Path(record["traceback_file"]).is_file()


# ---------------------------------------------------------------- SIGINT, SIGTERM, kill -9

STRATEGIES = ["--strategies", "linear_probe,full,two_stage"]


def start_and_hang_in_third_cell(tmp_path: Path, synth_dir: Path):
    """Start a 3-cell run; return it once two records exist and cell 3 is training."""
    events = tmp_path / "events"
    env = subprocess_env(synth_dir, TLBENCH_TEST_EVENTS=str(events), TLBENCH_TEST_HANG_AT="3")
    proc = tiny_cli(TINY_RUN + STRATEGIES + output_args(tmp_path), env)
    deadline = time.monotonic() + 240
    while "hang 3" not in (events.read_text() if events.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"run ended or stalled before cell 3 (rc {proc.returncode}):\n{out}{err}")
        time.sleep(0.05)
    return proc, env


def assert_intact(tmp_path: Path, before: bytes, count: int) -> None:
    after = records_path(tmp_path).read_bytes()
    assert after == before, "finished records changed"
    lines = after.decode().splitlines()
    assert len(lines) == count and all(json.loads(line)["status"] == "ok" for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_abandons_the_cell_in_flight_and_says_how_to_resume(
    tiny_plugin, no_pictures, synth_dir, tmp_path, signum
):
    proc, _ = start_and_hang_in_third_cell(tmp_path, synth_dir)
    before = records_path(tmp_path).read_bytes()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 128 + signum, out + err
    name = signal.Signals(signum).name
    message = " ".join(err.split())
    assert f"interrupted by {name}: abandoned the cell in flight (tiny / two_stage" in message
    assert "2 cells finished in this run and every finished record is kept" in message
    assert "To resume, run the same command again" in message
    assert "Traceback" not in err
    assert_intact(tmp_path, before, 2)
    assert not (tmp_path / "results" / "t" / "tracebacks").exists()

    if signum == signal.SIGINT:
        return  # resuming is the same either way: shown once, after SIGTERM
    resumed = run_main(TINY_RUN + STRATEGIES + output_args(tmp_path))  # the same command
    assert resumed.code == 0 and "1 cells ran, 2 already recorded" in resumed.out
    assert records_path(tmp_path).read_bytes().startswith(before)
    assert len({r["config_hash"] for r in read_records(tmp_path)}) == 3


@pytest.mark.slow
def test_kill_9_mid_run_then_the_same_command_completes(synth_dir, tmp_path):
    proc, env = start_and_hang_in_third_cell(tmp_path, synth_dir)
    before = records_path(tmp_path).read_bytes()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert_intact(tmp_path, before, 2)

    env.pop("TLBENCH_TEST_HANG_AT")
    again = tiny_cli(TINY_RUN + STRATEGIES + output_args(tmp_path), env)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, out + err
    assert "1 cells ran, 2 already recorded" in " ".join(out.split())
    after = records_path(tmp_path).read_bytes()
    assert after.startswith(before)  # nothing lost, nothing rewritten
    records = read_records(tmp_path)
    hashes = [r["config_hash"] for r in records]
    assert len(records) == 3 and len(set(hashes)) == 3  # none duplicated
    assert sorted(r["strategy"] for r in records) == ["full", "linear_probe", "two_stage"]


# ---------------------------------------------------------------- corrupt records.jsonl


def test_corrupt_record_lines_are_reported_skipped_and_recomputed(
    tiny_plugin, no_pictures, tmp_path
):
    args = TINY_RUN + ["--strategies", "linear_probe,full"] + output_args(tmp_path)
    assert run_main(args).code == 0
    path = records_path(tmp_path)
    first, second = path.read_text().splitlines()
    # an editor accident on line 1, a stray non-record on line 3 and a torn last write
    path.write_text(first[: len(first) // 2] + "\n" + second + "\n[1, 2]\n" + second[:40])

    with pytest.warns(CorruptRecordWarning) as caught:
        kept = load_records(path.parent)
    assert [r["strategy"] for r in kept] == ["full"]
    messages = [str(w.message) for w in caught]
    for number in (1, 3, 4):
        assert any(m.startswith(f"{path}:{number}: skipped a line") for m in messages)

    result = run_main(args)  # the same command again
    assert result.code == 0
    assert "1 cells ran, 1 already recorded" in result.out
    warnings = [line for line in result.err_lines() if line.startswith("warning:")]
    assert len(warnings) == 3 and f"{path}:1: skipped a line that is corrupt JSON" in warnings[0]
    lines = path.read_text().splitlines()
    assert lines[1] == second  # everything else kept as it was
    assert json.loads(lines[-1])["strategy"] == "linear_probe"  # recomputed, own line
    with pytest.warns(CorruptRecordWarning):
        assert sorted(r["strategy"] for r in load_records(path.parent)) == [
            "full",
            "linear_probe",
        ]


# ---------------------------------------------------------------- output directory


def test_missing_output_directory_is_created(tiny_plugin, no_pictures, tmp_path):
    deep = ["--output", str(tmp_path / "new" / "deeper"), "--benchmarks", str(tmp_path / "B.md")]
    result = run_main(TINY_RUN + ["--strategies", "linear_probe"] + deep)
    assert result.code == 0, result.err
    assert (tmp_path / "new" / "deeper" / "t" / "records.jsonl").is_file()


def test_output_under_a_regular_file_fails_before_training(tiny_plugin, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_main(
        TINY_RUN + ["--output", str(blocker / "results"), "--benchmarks", str(tmp_path / "B.md")]
    )
    assert result.code == 2
    (line,) = result.err_lines()
    assert line == (
        f"error: cannot write results to {blocker / 'results' / 't'}: Not a directory; "
        "choose a writable --output directory."
    )
    assert result.out == "" and not (tmp_path / "B.md").exists()


@pytest.mark.parametrize("how", ["chmod", "read-only filesystem"])
def test_read_only_output_fails_before_training(tiny_plugin, tmp_path, monkeypatch, how):
    output = tmp_path / "results"
    (output / "t").mkdir(parents=True)
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes through chmod 0555; the read-only filesystem case covers it")
        (output / "t").chmod(0o555)
    else:  # root ignores permission bits, so make the probe write fail like EROFS would

        def read_only(self, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

        monkeypatch.setattr(Path, "write_text", read_only)
    try:
        result = run_main(TINY_RUN + output_args(tmp_path))
    finally:
        (output / "t").chmod(0o755)
    assert result.code == 2
    (line,) = result.err_lines()
    reason = "Permission denied" if how == "chmod" else "Read-only file system"
    assert f"cannot write results to {output / 't'}: {reason}" in line
    assert "choose a writable --output directory" in line
    assert snapshot(output) == {} and "cells ran" not in result.out
