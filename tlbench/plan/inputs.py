"""Every problem with ``tlbench run``'s options, reported at once before anything runs.

The CLI parses its options one after another, so the first bad one would hide the
others.  :func:`check_run` runs every parser on its own first and raises one
TlbenchError (exit 2) listing all that failed; the paths a run will write are checked
here too (``tlbench.store.outputs``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

from tlbench.api.errors import TlbenchError
from tlbench.store.outputs import benchmarks_problems, join_problems
from tlbench.store.outputs import problems as output_problems

DEFAULT_EVALS_PER_EPOCH = 4  # tlbench run's default; tiny runs evaluate at every step instead
SIZE_OPTIONS = ("epochs", "batch_size", "resolution", "train_size", "val_size", "test_size")


class _Collector:
    def __init__(self) -> None:
        self.found: list[str] = []
        self.first: Optional[TlbenchError] = None  # re-raised as is when it is the only one

    def take(self, parse: Callable, *args, **kwargs):
        """``parse(...)``, or None with its message collected."""
        try:
            return parse(*args, **kwargs)
        except TlbenchError as exc:
            self.first = self.first or exc
            self.found.append(str(exc))
            return None


def check_run(
    registry,
    is_cuda: bool,
    *,
    backbones: str,
    strategies: str,
    datasets: str,
    weights: str,
    seeds: str,
    threshold: Optional[str],
    lr: str,
    evals_per_epoch: int,
    head_hidden: int,
    augment: str,
    output: Path,
    run_name: Optional[str],
    benchmarks: Optional[Path],
    **other,
) -> None:
    """Raise one TlbenchError naming every invalid option (nothing has run yet).

    ``other`` holds the size options (epochs, batch_size, resolution, train/val/test
    size); options this check does not know are ignored."""
    sizes = {k: other.get(k) for k in SIZE_OPTIONS}
    sizes.update({k: other[k] for k in ("lr_halving", "schedule") if k in other})
    from tlbench.backbones.weights import parse_weights_option
    from tlbench.plan.settings import make_settings, parse_lr, parse_seeds, parse_thresholds

    c = _Collector()
    rate = c.take(parse_lr, lr)
    settings = c.take(
        make_settings, is_cuda, rate, evals_per_epoch, head_hidden, augment=augment, **sizes
    )
    names = {
        kind: c.take(registry.resolve_list, kind, text)
        for kind, text in (
            ("backbones", backbones),
            ("strategies", strategies),
            ("datasets", datasets),
        )
    }
    c.take(parse_seeds, seeds)
    c.take(parse_weights_option, weights)
    if names["datasets"]:
        defaults = {d: registry.get("datasets", d).default_threshold for d in names["datasets"]}
        c.take(parse_thresholds, threshold, names["datasets"], defaults)
    if settings is not None:
        c.take(check_evals_per_epoch, settings)
    if run_name is not None:
        from tlbench.store.records import run_dir  # checks the name and that it stays inside

        directory = c.take(run_dir, output, run_name)
        c.found += output_problems(directory, None) if directory is not None else []
    benchmark_file = benchmarks if benchmarks is not None else output / "BENCHMARKS.md"
    c.found += benchmarks_problems(benchmark_file)
    found = list(dict.fromkeys(c.found))
    if len(found) == 1 and c.first is not None and str(c.first) == found[0]:
        raise c.first
    if found:
        raise TlbenchError(join_problems(found))


def check_evals_per_epoch(settings) -> None:
    """More evaluations per epoch than training steps cannot happen: an explicit request
    for them is an error (the default, 4, is capped to the steps as before)."""
    if settings.train_size is None:
        return  # the whole split: its step count is only known once the data is loaded
    steps = math.ceil(settings.train_size / settings.batch_size)
    if settings.evals_per_epoch > max(steps, DEFAULT_EVALS_PER_EPOCH):  # the default: capped
        raise TlbenchError(
            f"--evals-per-epoch {settings.evals_per_epoch} is more than the {steps} training "
            f"steps per epoch (train size {settings.train_size} / batch {settings.batch_size}): "
            f"accepted 1..{steps}."
        )
