"""Split sizes: datasets' own defaults, and every size problem reported at once.

A ``DatasetSpec`` may declare ``default_sizes`` (``{"train": 400, "val": 100, "test":
100}``, or one such dict per profile under ``"cpu"``/``"cuda"``).  A size the user does
not give comes from the profile (tlbench.plan.settings), where the dataset's default wins when
it is smaller (or the profile's is "all") -- and since one run directory holds one
configuration, a run over several datasets takes the smallest of their defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

from tlbench.api.errors import DataUnavailable, TlbenchError

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.api.specs import DatasetSpec
    from tlbench.plan.settings import Cell
    from tlbench.run.runner import Runner

SIZE_KEYS = ("train", "val", "test")


def declared(spec: DatasetSpec, is_cuda: bool) -> dict[str, int]:
    """The spec's default sizes for this profile (empty when it declares none)."""
    sizes = dict(getattr(spec, "default_sizes", None) or {})
    profile = sizes.pop("cuda" if is_cuda else "cpu", None)
    sizes.pop("cpu", None), sizes.pop("cuda", None)
    sizes.update(profile or {})
    return {k: int(v) for k, v in sizes.items() if k in SIZE_KEYS}


def with_dataset_defaults(
    specs: Iterable[DatasetSpec], is_cuda: bool, **given: Optional[int]
) -> dict[str, Optional[int]]:
    """``train_size``, ``val_size``, ``test_size`` for make_settings: what the user
    gave, else the profile's capped by the datasets' declared defaults."""
    from tlbench.plan.settings import CPU_PROFILE, CUDA_PROFILE

    profile = CUDA_PROFILE if is_cuda else CPU_PROFILE
    declarations = [declared(spec, is_cuda) for spec in specs]
    sizes: dict[str, Optional[int]] = {}
    for key in SIZE_KEYS:
        flag = f"{key}_size"
        if given.get(flag) is not None:
            sizes[flag] = given[flag]
            continue
        candidates = [d[key] for d in declarations if key in d]
        if profile[flag] is not None:
            candidates.append(profile[flag])
        sizes[flag] = min(candidates) if candidates else None
    return sizes


def check_sizes(runner: Runner, cells: Iterable[Cell]) -> None:
    """Every split size that a dataset cannot provide, for all datasets, in one error."""
    problems: list[str] = []
    seen = set()
    for cell in cells:
        s = cell.settings
        key = (cell.dataset, s.train_size, s.val_size, s.test_size)
        if key in seen:
            continue
        seen.add(key)
        try:
            loaded = runner.workspace.loaded(cell.dataset)
        except DataUnavailable:
            continue
        problems += size_problems(cell.dataset, loaded, s.train_size, s.val_size, s.test_size)
    if len(problems) == 1:
        raise TlbenchError(f"{problems[0]}; set sizes with --train-size, --val-size, --test-size.")
    if problems:
        raise TlbenchError(
            f"{len(problems)} split sizes this data cannot provide (set them with "
            "--train-size, --val-size, --test-size):\n" + "\n".join(f"  {p}" for p in problems)
        )


def size_problems(
    name: str, loaded, train: Optional[int], val: int, test: Optional[int]
) -> list[str]:
    """What make_splits would refuse, all of it (tlbench.data.splits)."""
    n_train, n_test = len(loaded.train_labels), len(loaded.test_labels)
    own_val = loaded.val_labels is not None
    classes = loaded.num_classes
    problems = []
    left = n_train if own_val else n_train - val
    if not own_val and val >= n_train:
        problems.append(
            f"validation size {val} leaves no training images out of {n_train} {name} train "
            f"images (max {n_train - 1})"
        )
    elif not own_val and 0 < val < classes:
        problems.append(f"validation size {val} cannot cover the {classes} {name} classes")
    if train is not None and left > 0 and train > left:
        held = "" if own_val else f" left after holding out {val}"
        problems.append(
            f"train size {train} is larger than the {left} {name} train images{held} (max {left})"
        )
    if train is not None and train < classes:
        problems.append(f"train size {train} cannot cover the {classes} {name} classes")
    if test is not None and test > n_test:
        problems.append(
            f"test size {test} is larger than the {n_test} {name} test images (max {n_test})"
        )
    elif test is not None and test < classes:
        problems.append(f"test size {test} cannot cover the {classes} {name} classes")
    return problems
