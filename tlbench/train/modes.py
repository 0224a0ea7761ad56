"""Train/eval mode switching that puts every module back exactly as it was.

A phase may keep single modules of a trainable stage in eval mode (frozen BatchNorm
statistics), so a recursive ``module.train(was_training)`` afterwards would not restore
it: each submodule's own flag is saved and restored.  Its own module (not in
tlbench.train.evaluate) because the feature cache and the BatchNorm fold, which the
evaluation passes use, need it too.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` and all its submodules in eval mode inside; each one's own training flag
    restored on exit, even if the body raises."""
    saved = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in saved:
            m.training = mode
