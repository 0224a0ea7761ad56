"""Where a run writes, checked before anything runs: names, containment, file kinds.

A run writes ``<output>/<run>/records.jsonl`` (and ``plots/``, ``tracebacks/``, a lock
file) and the leaderboard (``--benchmarks``).  Every one of those paths is checked here
before the first cell trains, so a bad path costs seconds, not a training run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from tlbench.api.errors import TlbenchError
from tlbench.store.safeio import LOCK_FILE, UnsafePathError, check_regular_or_absent

RECORDS_FILE = "records.jsonl"  # under <output>/<run>/
PLOT_DIR = "plots"  # under <output>/<run>/
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
RUN_NAME_RULE = (
    "letters, digits, '.', '_', '+' and '-', starting with a letter or digit, at most "
    "128 characters (no '/', no '..')"
)


def check_run_name(name: str) -> None:
    """A run name is one plain directory name: it can neither leave ``--output`` nor
    break the leaderboard's Markdown."""
    if not RUN_NAME.fullmatch(name) or ".." in name:
        raise TlbenchError(f"--run-name {name!r} is invalid: use {RUN_NAME_RULE}.")


def inside(output: Path, name: str) -> Path:
    """``output / name``, checked to resolve inside ``output`` (a symlinked run directory
    pointing elsewhere is refused)."""
    directory = output / name
    root = output.resolve()
    if not directory.resolve().is_relative_to(root):
        raise TlbenchError(
            f"run directory {directory} resolves to {directory.resolve()}, outside --output "
            f"{output}; tlbench writes only inside --output: remove the link or choose "
            "another --run-name."
        )
    return directory


def problems(directory: Path, benchmarks: Optional[Path]) -> list[str]:
    """Everything wrong with the paths a run will write, without creating anything."""
    found = []
    for path, what in (
        (directory / RECORDS_FILE, "records"),
        (directory / LOCK_FILE, "lock file"),
    ):
        try:
            check_regular_or_absent(path, what)
        except UnsafePathError as exc:
            found.append(str(exc))
    for sub in (PLOT_DIR, "tracebacks"):
        problem = _directory_problem(directory / sub)
        if problem:
            found.append(problem)
    if benchmarks is not None:
        found += benchmarks_problems(benchmarks)
    return found


def check(directory: Path, benchmarks: Optional[Path]) -> None:
    """Raise one TlbenchError (exit 2) listing every problem of :func:`problems`."""
    found = problems(directory, benchmarks)
    if found:
        raise TlbenchError(join_problems(found))


def join_problems(found: list[str]) -> str:
    if len(found) == 1:
        return found[0]
    return f"{len(found)} problems: " + " ".join(
        f"({i}) {text}" for i, text in enumerate(found, start=1)
    )


def _directory_problem(path: Path) -> Optional[str]:
    if path.is_symlink():
        return f"{path} is a symbolic link; tlbench writes only real directories under --output."
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a directory; move it away."
    return None


def benchmarks_problems(path: Path) -> list[str]:
    if path.is_dir():
        return [f"--benchmarks {path} is a directory; give the leaderboard's file path."]
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        return [f"--benchmarks {path}: {ancestor} is not a directory."]
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return [f"--benchmarks {path}: {ancestor} is not writable."]
    return []


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
