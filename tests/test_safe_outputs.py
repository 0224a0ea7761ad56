"""Faults while writing, as real processes: a full disk, signals outside training, kill -9
while the leaderboard is replaced, two runs on one output.

Each test first makes a finished record, a leaderboard and (where pictures matter) PNGs,
then injects the fault into a ``tlbench`` subprocess (``tests/helpers/tiny_cli.py``) and checks
that every earlier file survives byte for byte.  The full disk is real where the machine
allows it (a 512 KiB tmpfs, mounted as root); everywhere the same tests also run with an
injected ``os.write`` that writes short and then fails with ENOSPC.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.cli import TINY_RUN, records_path, run_main, subprocess_env, tiny_cli

LOCK = ".tlbench.lock"


def outputs(root: Path) -> list[str]:
    return ["--output", str(root / "results"), "--benchmarks", str(root / "B.md")]


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the filler and the (empty) lock file."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("filler", LOCK, "events", "2nd")
    }


def wait_for(proc: subprocess.Popen, events: Path, line: str, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while line not in (events.read_text() if events.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no {line!r} before the process ended (rc {proc.returncode}):\n{out}{err}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, " ".join(out.split()), err


# ---------------------------------------------------------------- a full disk


@pytest.fixture(params=["tmpfs", "short-write"])
def full_disk(request, tmp_path):
    """``(root, env)``: a directory whose disk fills up once a cell starts."""
    root = tmp_path / "disk"
    root.mkdir()
    if request.param == "short-write":
        yield root, {"TLBENCH_TEST_SHORT_WRITE": "1"}
        return
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({mount.stderr.strip()}): short-write covers it"
        )
    try:
        yield root, {"TLBENCH_TEST_FILL": str(root / "filler")}
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.mark.slow
def test_full_disk_keeps_every_record_leaderboard_and_picture(full_disk, synth_dir, tiny_plugin):
    root, fault = full_disk
    first = run_main(TINY_RUN + ["--strategies", "linear_probe"] + outputs(root))  # with PNGs
    assert first.code == 0, first.err
    before = files(root)
    assert "B.md" in before and any(name.endswith(".png") for name in before)

    env = subprocess_env(synth_dir, **fault)
    code, out, err = finish(tiny_cli(TINY_RUN + ["--strategies", "full"] + outputs(root), env))
    message = " ".join(err.split())
    assert code == 1, out + err
    assert f"could not append to {records_path(root)}: No space left on device" in message
    assert "every earlier record in it is kept as it was" in message
    assert "Traceback" not in err and "cells ran" not in out
    assert files(root) == before  # the record file cut back, B.md and PNGs untouched

    if fault.get("TLBENCH_TEST_FILL"):  # tiny_cli filled the disk: leave it full
        env.pop("TLBENCH_TEST_FILL")
    env["TLBENCH_TEST_PICTURES"] = "1"
    board = ["leaderboard", "--output", str(root / "results"), "--path", str(root / "B.md")]
    code, out, err = finish(tiny_cli(board, env))
    message = " ".join(err.split())
    assert code == 1, out + err
    assert "could not write" in message and "No space left on device" in message
    assert "Traceback" not in err
    assert files(root) == before
    assert not [p for p in root.rglob(".*.tmp")], "a temporary file was left behind"


# ---------------------------------------------------------------- signals outside training


@pytest.fixture
def recorded(tiny_plugin, tmp_path, monkeypatch):
    """One finished record and its leaderboard (no pictures: not the subject here)."""
    from helpers.cli import skip_pictures

    skip_pictures(monkeypatch)
    result = run_main(TINY_RUN + ["--strategies", "linear_probe"] + outputs(tmp_path))
    assert result.code == 0, result.err
    return tmp_path


def start(
    tmp_path: Path, synth_dir: Path, args: list[str], events: str = "events", **env: str
) -> subprocess.Popen:
    env = subprocess_env(synth_dir, TLBENCH_TEST_EVENTS=str(tmp_path / events), **env)
    return tiny_cli(args, env)


@pytest.mark.parametrize(
    "where, signum, phrase",
    [
        ("plan", signal.SIGINT, "interrupted by SIGINT before training"),
        ("leaderboard", signal.SIGTERM, "interrupted by SIGTERM while writing the leaderboard"),
    ],
)
def test_signal_outside_training_says_what_was_kept(recorded, synth_dir, where, signum, phrase):
    before = files(recorded)
    args = TINY_RUN + ["--strategies", "linear_probe,full"] + outputs(recorded)
    if where == "leaderboard":
        args = [
            "leaderboard",
            "--output",
            str(recorded / "results"),
            "--path",
            str(recorded / "B.md"),
        ]
    proc = start(recorded, synth_dir, args, TLBENCH_TEST_HANG_IN=where)
    wait_for(proc, recorded / "events", f"hang {where}")
    proc.send_signal(signum)
    code, out, err = finish(proc, 60)

    assert code == 128 + signum, out + err
    (line,) = [line for line in err.splitlines() if line.strip()] or [""]
    assert phrase in line and "kept" in line, err
    assert files(recorded) == before


def test_two_quick_ctrl_c_print_one_line_and_no_traceback(tiny_plugin, synth_dir, tmp_path):
    proc = start(
        tmp_path,
        synth_dir,
        TINY_RUN + ["--strategies", "full"] + outputs(tmp_path),
        TLBENCH_TEST_HANG_AT="1",
    )
    wait_for(proc, tmp_path / "events", "hang 1")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc, 60)
    assert code == 130, out + err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(" ".join(lines).split("interrupted by SIGINT")) == 2, err  # said once


def test_kill_9_while_the_leaderboard_is_replaced_keeps_the_old_one(recorded, synth_dir):
    before = files(recorded)
    args = ["leaderboard", "--output", str(recorded / "results"), "--path", str(recorded / "B.md")]
    proc = start(recorded, synth_dir, args, TLBENCH_TEST_HANG_IN="replace")
    wait_for(proc, recorded / "events", "hang replace")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    after = files(recorded)
    leftovers = [name for name in after if name not in before]
    assert all(Path(name).name.startswith(".B.md.") for name in leftovers), leftovers
    assert {k: v for k, v in after.items() if k in before} == before  # B.md byte for byte


# ---------------------------------------------------------------- two runs, one output


@pytest.mark.slow
def test_a_second_run_skips_the_cell_the_first_is_training(tiny_plugin, synth_dir, tmp_path):
    args = TINY_RUN + outputs(tmp_path)
    first = start(
        tmp_path, synth_dir, args + ["--strategies", "linear_probe"], TLBENCH_TEST_HANG_AT="1"
    )
    wait_for(first, tmp_path / "events", "hang 1")
    try:
        second = start(tmp_path, synth_dir, args + ["--strategies", "linear_probe,full"], "2nd")
        code, out, err = finish(second)
    finally:
        first.send_signal(signal.SIGTERM)
        first_code, _, first_err = finish(first, 60)
    assert code == 0, out + err
    assert "1 cells ran" in out and "1 skipped" in out
    assert "skipped: claimed by another tlbench run on this output (it is training it now)" in out
    assert first_code == 143, first_err
    lines = records_path(tmp_path).read_text().splitlines()
    assert len(lines) == 1 and '"strategy": "full"' in lines[0]  # linear_probe: nobody
