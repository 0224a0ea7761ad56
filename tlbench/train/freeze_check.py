"""Freeze verification: what a strategy claims is frozen must come out bit-identical."""

from __future__ import annotations

import torch

from tlbench.api.model import StagedModel


class FreezeSnapshot:
    """Copies of every parameter and buffer taken before training.

    After training, any parameter that no optimizer ever held must be unchanged, and so
    must every buffer (BatchNorm running statistics) of a module that never ran in
    train mode: a ``frozen`` BatchNorm policy is checked bit-for-bit too.
    """

    def __init__(self, model: StagedModel):
        self.model = model
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def changed(self, trained: set[str], stats_adapted: set[str]) -> list[str]:
        """Names of frozen tensors that changed (empty when the freeze held).

        ``trained``: parameters some optimizer held; ``stats_adapted``: modules that ran in
        train mode at some point (their running statistics may move).
        """
        bad = [
            n
            for n, p in self.model.named_parameters()
            if n not in trained and n in self.params and not torch.equal(p, self.params[n])
        ]
        for name, buf in self.model.named_buffers():
            owner = name.rsplit(".", 1)[0]
            if name not in self.buffers or owner in stats_adapted:
                continue
            if not torch.equal(buf, self.buffers[name]):
                bad.append(name)
        return bad
