"""The real ``tlbench`` console entry point with the tiny test plugin registered.

Subprocess tests (signals, ``kill -9``) run this file instead of the installed script,
registering the plugin the way ``conftest.tiny_plugin`` does: by wrapping
``tlbench.registry.get_plugin_manager``.  Environment:

- ``TLBENCH_TEST_SYNTH_DIR``: the synthetic IDX directory behind dataset ``synth``;
- ``TLBENCH_TEST_EVENTS``: a file that gets one line per cell start (``start N``);
- ``TLBENCH_TEST_HANG_AT``: the N-th cell to start hangs at its first epoch end, after
  writing ``hang N`` to the events file, so a test can signal it mid-training.

Leaderboard pictures are not rendered (``cli_helpers.skip_pictures``): seconds per run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from plugin_fixtures import TinyPlugin  # noqa: E402

import tlbench.registry  # noqa: E402
from tlbench.hookspecs import hookimpl  # noqa: E402


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
    original = tlbench.registry.get_plugin_manager

    def with_test_plugins(load_entry_points: bool = True):
        pm = original(load_entry_points)
        for plugin, name in plugins:
            pm.register(plugin, name=name)
        return pm

    tlbench.registry.get_plugin_manager = with_test_plugins
    try:
        from tlbench import plots
    except ImportError:
        return
    plots.render_all = lambda *args, **kwargs: None


if __name__ == "__main__":
    install()
    from tlbench.cli import main

    main()
