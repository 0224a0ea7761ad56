"""Which weights a backbone starts from: ImageNet, random init, or a local file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from tlbench.api.errors import TlbenchError

if TYPE_CHECKING:  # pragma: no cover
    import torch


class WeightsUnavailable(TlbenchError):
    """ImageNet weights cannot be had here; the message says why and how to fix it.

    The runner records the affected cells as ``skipped`` and goes on.
    """


@dataclass(frozen=True)
class WeightsChoice:
    """``kind`` is ``imagenet``, ``random``, ``file`` (then ``path`` is set),
    ``pretrain`` (``path`` is the source dataset) or ``pretrained``: the backbone
    plugin's own checkpoint, whatever it is (recorded as such, never as ImageNet)."""

    kind: str
    path: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> WeightsChoice:
        if text in ("imagenet", "random", "pretrained"):
            return cls(text)
        if text.startswith("pretrain:"):
            return cls("pretrain", text.split(":", 1)[1])
        import os

        if text.startswith("file:") and os.path.isfile(text[5:]):  # a label() round trip
            return cls("file", os.path.abspath(text[5:]))

        if os.path.isfile(text):
            return cls("file", os.path.abspath(text))
        raise TlbenchError(
            f"--weights {text!r} is neither 'imagenet', 'random' nor an existing file path "
            "(the other kinds: 'pretrained', 'pretrain:<dataset>', per backbone NAME=...)."
        )

    def label(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_weights_option(text: str) -> dict[str, str]:
    """``--weights``: ``imagenet`` for every backbone, or per backbone
    ``resnet18=imagenet,tinycnn=/path/w.pt`` (an item without ``NAME=`` sets the
    default, else ``imagenet``) -> ``{backbone or "": canonical label}``."""
    choices: dict[str, str] = {"": "imagenet"}
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    for item in items or ["imagenet"]:
        name, eq, value = item.partition("=")
        if not eq or os.path.exists(item) or "/" in name:  # a path may hold "="
            name, value = "", item
        choices[name] = WeightsChoice.parse(value).label()
    return choices


def weights_for(choices: str | dict[str, str], backbone: str) -> str:
    """The weights label of ``backbone`` (a plain label applies to every backbone)."""
    if isinstance(choices, str):
        return choices
    return choices.get(backbone, choices[""])


def read_state_dict(path: str, max_bytes: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint as ``{name: tensor}`` without ever running pickled code.

    Accepts a raw state dict or a dict holding one under ``state_dict`` or ``model``
    (common training checkpoints) and strips ``module.`` (DataParallel/DDP) and
    ``_orig_mod.`` (torch.compile) prefixes so the names match a plain model.  A file
    that would load more than ``max_bytes`` (on disk, or once its zip entries are
    inflated) is refused before anything is loaded.
    """
    if max_bytes is not None:
        check_size(path, max_bytes)
    obj = _torch_load_safely(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise TlbenchError(
            f"--weights {path}: holds a {type(obj).__name__}, not a state dict; save one with "
            "torch.save(model.state_dict(), path)."
        )
    return _clean_state_dict(obj, path)


def _torch_load_safely(path: str) -> object:
    """``torch.load(weights_only=True)``; refusals become one clear TlbenchError."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TlbenchError(
            f"--weights {path}: refused by torch.load(weights_only=True): {_refusal_reason(exc)} "
            "tlbench never loads with weights_only=False (that can run arbitrary code); re-save "
            "only the tensors: torch.save(model.state_dict(), path)."
        ) from None
    except Exception as exc:  # torch raises many types for unreadable files
        raise TlbenchError(
            f"--weights {path}: not a readable PyTorch checkpoint "
            f"({type(exc).__name__}: {_without_unsafe_advice(str(exc))})."
        ) from exc


def _without_unsafe_advice(text: str) -> str:
    """torch's first line, minus any sentence that suggests ``weights_only=False``."""
    lines = text.strip().splitlines() or [""]
    sentences = [s for s in lines[0].split(". ") if "weights_only" not in s]
    return ". ".join(sentences).rstrip(".") or "refused"


def check_size(path: str, max_bytes: int) -> None:
    """Refuse a checkpoint bigger than ``max_bytes`` on disk or inflated (zip entries'
    declared sizes), before torch reads a byte of it."""
    import zipfile

    size = os.path.getsize(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            size = max(size, sum(info.file_size for info in archive.infolist()))
    if size > max_bytes:
        raise TlbenchError(
            f"--weights {path}: would load {size / 2**20:,.1f} MiB, more than the "
            f"{max_bytes / 2**20:,.1f} MiB this backbone's weights can take; not loaded. "
            "Is it the checkpoint of another (larger) model?"
        )


def _refusal_reason(exc: Exception) -> str:
    """The one informative sentence out of torch's long weights_only error."""
    import re

    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    reason = (match.group(1) if match else text).strip().splitlines()[0]
    return _without_unsafe_advice(reason.split(". ")[0]) + "."


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def _clean_state_dict(obj: dict, path: str) -> dict[str, torch.Tensor]:
    import torch

    cleaned: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TlbenchError(
                f"--weights {path}: not a state dict: entry {key!r} is a "
                f"{type(value).__name__}, expected tensors only; save one with "
                "torch.save(model.state_dict(), path)."
            )
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned
