"""The real ``tlbench`` console entry point with the tiny test plugin registered.

Subprocess tests (signals, ``kill -9``) run this file instead of the installed script,
registering the plugin the way ``conftest.tiny_plugin`` does: by wrapping
``tlbench.plugins.registry.get_plugin_manager``.  Environment:

- ``TLBENCH_TEST_SYNTH_DIR``: the synthetic IDX directory behind dataset ``synth``;
- ``TLBENCH_TEST_EVENTS``: a file that gets one line per cell start (``start N``);
- ``TLBENCH_TEST_HANG_AT``: the N-th cell to start hangs at its first epoch end, after
  writing ``hang N`` to the events file, so a test can signal it mid-training.

Leaderboard pictures are not rendered (``helpers.cli.skip_pictures``): seconds per run,
unless ``TLBENCH_TEST_PICTURES=1``.  Faults for ``test_safe_outputs.py``:

- ``TLBENCH_TEST_HANG_IN``: ``plan`` (while the cells are planned), ``leaderboard`` (while
  its pictures are rendered) or ``replace`` (the leaderboard's temporary file is written,
  not yet renamed): writes ``hang <where>`` to the events file and waits for a signal;
- ``TLBENCH_TEST_FILL``: a file that, when a cell starts, grows until its filesystem is
  full (a real full disk on a small tmpfs);
- ``TLBENCH_TEST_SHORT_WRITE=1``: the disk is "full" from the start: the first
  ``os.write`` to a regular file writes half its bytes, every later one fails ENOSPC.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# Run as a script, Python put tests/helpers first on sys.path, where helpers/ray_runtime.py
# and friends could shadow real packages: tests/ takes its place (import helpers.x).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import tlbench.plugins.registry  # noqa: E402
from helpers.plugins import TinyPlugin  # noqa: E402
from tlbench.api.hookspecs import hookimpl  # noqa: E402


class EventsPlugin:
    """Reports cell starts to a file and, if asked, hangs inside one cell's training."""

    def __init__(self, events: Path | None, hang_at: int):
        self.events, self.hang_at, self.started = events, hang_at, 0

    def _log(self, line: str) -> None:
        if self.events is not None:
            with open(self.events, "a") as handle:
                handle.write(line + "\n")

    @hookimpl
    def cell_started(self, cell):
        self.started += 1
        self._log(f"start {self.started} {cell.strategy}")
        if os.environ.get("TLBENCH_TEST_FILL"):
            fill(Path(os.environ["TLBENCH_TEST_FILL"]))

    def hang(self, where: str) -> None:
        self._log(f"hang {where}")
        while True:
            time.sleep(0.05)

    @hookimpl
    def epoch_end(self, cell, epoch, val_accuracy):
        if self.started == self.hang_at:
            self._log(f"hang {self.started}")
            while True:  # a long training step: only a signal gets us out
                time.sleep(0.05)


def install() -> None:
    events = os.environ.get("TLBENCH_TEST_EVENTS")
    plugins = [
        (TinyPlugin(Path(os.environ["TLBENCH_TEST_SYNTH_DIR"])), "tests:tiny"),
        (
            EventsPlugin(
                Path(events) if events else None, int(os.environ.get("TLBENCH_TEST_HANG_AT", 0))
            ),
            "tests:events",
        ),
    ]
    original = tlbench.plugins.registry.get_plugin_manager

    def with_test_plugins(load_entry_points: bool = True):
        pm = original(load_entry_points)
        for plugin, name in plugins:
            pm.register(plugin, name=name)
        return pm

    tlbench.plugins.registry.get_plugin_manager = with_test_plugins
    if os.environ.get("TLBENCH_TEST_PICTURES") != "1":
        from tlbench.report import plots
        plots.render_all = lambda *args, **kwargs: None
    install_faults(plugins[1][0], os.environ.get("TLBENCH_TEST_HANG_IN", ""))
    if os.environ.get("TLBENCH_TEST_SHORT_WRITE") == "1":
        os.write = short_writes(os.write)


def install_faults(events: EventsPlugin, where: str) -> None:
    import tlbench.report.plots
    import tlbench.run.runner

    if where == "plan":
        tlbench.run.runner.Runner.finalize = lambda self, cells: events.hang("plan")
    elif where == "leaderboard":
        tlbench.report.plots.render_all = lambda *args, **kwargs: events.hang("leaderboard")
    elif where == "replace":
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith(".md"):
                events.hang("replace")
            return real(src, dst, *args, **kwargs)

        os.replace = replace


def short_writes(real):
    """A full disk: one short write to a regular file, then ENOSPC for every later one."""
    import errno
    import stat

    state = {"short": True}

    def write(fd, data):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return real(fd, data)
        if state.pop("short", False) and len(data) > 1:
            return real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def fill(path: Path) -> None:
    """Grow ``path`` until its filesystem has no space left."""
    with open(path, "ab", buffering=0) as handle:
        block = b"\0" * 4096
        try:
            while True:
                handle.write(block)
        except OSError:
            pass


if __name__ == "__main__":
    install()
    from tlbench.cli.app import main

    main()
