"""Freeze verification: what a strategy claims is frozen must come out bit-identical."""

from __future__ import annotations

import torch

from tlbench.model import StagedModel


class FreezeSnapshot:
    """Copies of every parameter and buffer taken before training.

    After training, any parameter that no optimizer ever held and any buffer (BatchNorm
    running statistics) of a module whose parameters were all frozen must be unchanged.
    """

    def __init__(self, model: StagedModel):
        self.model = model
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def changed(self, trained: set[str]) -> list[str]:
        """Names of frozen tensors that changed (empty when the freeze held)."""
        bad = [
            n
            for n, p in self.model.named_parameters()
            if n not in trained and n in self.params and not torch.equal(p, self.params[n])
        ]
        frozen_modules = self._fully_frozen_modules(trained)
        for name, buf in self.model.named_buffers():
            owner = name.rsplit(".", 1)[0]
            if owner in frozen_modules and not torch.equal(buf, self.buffers[name]):
                bad.append(name)
        return bad

    def _fully_frozen_modules(self, trained: set[str]) -> set[str]:
        frozen = set()
        for name, module in self.model.named_modules():
            own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]
            if not any(p in trained for p in own):
                frozen.add(name)
        return frozen
