"""Drive the real console entry point (``tlbench.cli.app.main``) and inspect what it left.

``main`` is what the ``tlbench`` script runs: it turns errors into one line on stderr
and an exit code, so tests of exit codes and messages go through it, not ``app``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tlbench.store.records import RECORDS_FILE

TESTS = Path(__file__).resolve().parent.parent
TINY_CLI = TESTS / "helpers/tiny_cli.py"


def tiny_run_args(epochs: int = 2, reference: bool = False, device: str = "cpu") -> list[str]:
    """``tlbench run`` on the tiny test backbone and the synthetic IDX set (about a
    second a cell), one seed, into run ``t``; strategies and output are the caller's.
    ``device=""`` leaves the device to ``--device auto``."""
    return [
        *("run", "--backbones", "tiny", "--datasets", "synth", "--epochs", str(epochs)),
        *("--resolution", "16", "--train-size", "200", "--val-size", "100"),
        *("--test-size", "100", "--lr", "0.01", "--run-name", "t", "--seeds", "1"),
        *(("--device", device) if device else ()),
        *(() if reference else ("--no-reference",)),
    ]


TINY_RUN = tiny_run_args()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_main(args: list[str]) -> Result:
    """``tlbench ARGS`` in this process, exactly as the console script runs it."""
    import tlbench.cli.app

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["tlbench", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            tlbench.cli.ui.console.width = 250  # tables are checked for names: no folding
            tlbench.cli.app.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return Result(code, out.getvalue(), err.getvalue())


def skip_pictures(monkeypatch) -> None:
    """Leaderboard tables still build, but no PNGs are rendered (seconds per run).

    For tests whose subject is not the leaderboard; the failed- and diverged-cell tests
    keep the real rendering so unusual records go through it.
    """
    try:
        import tlbench.report.plots
    except ImportError:
        return
    no_plots = lambda *args, **kwargs: None  # noqa: E731
    monkeypatch.setattr(tlbench.report.plots, "render_all", no_plots, raising=False)


def output_args(tmp_path: Path) -> list[str]:
    return ["--output", str(tmp_path / "results"), "--benchmarks", str(tmp_path / "B.md")]


def records_path(tmp_path: Path) -> Path:
    return tmp_path / "results" / "t" / RECORDS_FILE


def read_records(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in records_path(tmp_path).read_text().splitlines()]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: to show that nothing was touched."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def subprocess_env(synth_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for ``helpers/tiny_cli.py``: offline, wide tables, the synthetic data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLBENCH_TEST_")}
    env.update(
        TLBENCH_OFFLINE="1",
        COLUMNS="250",
        PYTHONUNBUFFERED="1",
        TLBENCH_TEST_SYNTH_DIR=str(synth_dir),
        **extra,
    )
    return env


def tiny_cli(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    """Start ``tlbench ARGS`` as a real process with the tiny plugin registered."""
    return subprocess.Popen(
        [sys.executable, str(TINY_CLI), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
