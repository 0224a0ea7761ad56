"""Two runs on one output directory never train the same cell.

Before a cell trains, its run claims it (a lock on its config hash in the run
directory, ``safeio.Claims``) and reads the records again.  A cell claimed by another
process is skipped and reported ("claimed by another tlbench run"); a cell that another
process recorded since this run started counts as already recorded.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

from tlbench.store.records import finished_hashes, load_records
from tlbench.store.safeio import Claims

CLAIMED = "claimed by another tlbench run on this output (it is training it now)"
RECORDED = "recorded by another tlbench run on this output while this one ran"


class CellClaims:
    def __init__(self, directory: Path):
        self.directory = directory
        self.locks = Claims(directory)
        self.seen = finished_hashes(load_records(directory))  # at the start of this run

    @contextlib.contextmanager
    def claim(self, cell) -> Iterator[Optional[str]]:
        """None while this process owns the cell, else why it must not train it."""
        with self.locks.hold(cell.config_hash) as mine:
            if not mine:
                yield CLAIMED
            elif self._recorded_since(cell.config_hash):
                yield RECORDED
            else:
                yield None

    def _recorded_since(self, config_hash: str) -> bool:
        if config_hash in self.seen:  # --force recomputes what was there at the start
            return False
        return config_hash in finished_hashes(load_records(self.directory))

    @staticmethod
    def report(cell, reason: str, outcome, progress) -> None:
        if reason == RECORDED:
            outcome.already_done.append(cell)
            progress.cell_finished(cell, None, reason)
        else:
            outcome.skipped.append((cell, reason))
            progress.cell_finished(cell, None, f"skipped: {reason}")

    def close(self) -> None:
        self.locks.close()
