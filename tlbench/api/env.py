"""Every environment variable tlbench reads, read here and nowhere else.

Each is read when asked (not at import), so a test's ``monkeypatch.setenv`` or a long
process that changes its environment sees the current value.  Yes/no variables accept
one set of words everywhere (:data:`TRUE_WORDS`, :data:`FALSE_WORDS`, any case); any
other value is an error rather than a silent guess: ``TLBENCH_OFFLINE=ture`` must not
download.  Every cache tlbench writes lives under :func:`cache_dir`.

``TLBENCH_DISABLE_PLUGINS`` and ``TLBENCH_LOAD_PLUGINS`` are read by
``tlbench.plugins.registry`` (plugin discovery), and the ``TLBENCH_TEST_*`` variables by
the test helpers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from tlbench.api.errors import TlbenchError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
DEFAULT_SYSTEM_DATA = "/usr/share/datasets"


def text(name: str) -> str:
    """The variable stripped, ``""`` when unset."""
    return os.environ.get(name, "").strip()


def flag(name: str, default: Optional[bool]) -> Optional[bool]:
    """A yes/no variable: ``default`` when unset or empty, else one of the known words."""
    value = text(name).lower()
    if value == "":
        return default
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise TlbenchError(
        f"{name}={os.environ[name]!r} is not a yes/no value; use one of "
        f"{'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}."
    )


def number(name: str, default: int) -> int:
    """A whole-number variable, ``default`` when unset or empty."""
    value = text(name)
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TlbenchError(f"{name}={value!r} is not a whole number.") from None


# ---------------------------------------------------------------- network and paths


def offline() -> bool:
    """``TLBENCH_OFFLINE``: assume no internet, never try a download (weights or data)."""
    return bool(flag("TLBENCH_OFFLINE", False))


def xdg_cache_home() -> Path:
    """``$XDG_CACHE_HOME``, else ``~/.cache``: where per-user caches go (XDG spec)."""
    return Path(text("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()


def cache_dir(*parts: str) -> Path:
    """tlbench's cache (data, decoded folders, source checkpoints), or a folder in it:
    ``$TLBENCH_CACHE``, else ``$XDG_CACHE_HOME/tlbench``, else ``~/.cache/tlbench``."""
    base = Path(text("TLBENCH_CACHE") or xdg_cache_home() / "tlbench")
    return base.expanduser().resolve().joinpath(*parts)


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache as the hub resolves it: ``$HF_HUB_CACHE`` (or its old
    name ``$HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else under XDG's cache."""
    explicit = text("HF_HUB_CACHE") or text("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = text("HF_HOME") or xdg_cache_home() / "huggingface"
    return Path(home).expanduser() / "hub"


def data_dir() -> Optional[str]:
    """``TLBENCH_DATA_DIR``: the data directory when ``--data-dir`` is not given."""
    return text("TLBENCH_DATA_DIR") or None


def system_data() -> Path:
    """``TLBENCH_SYSTEM_DATA``: where system packages put datasets (Debian's default)."""
    return Path(text("TLBENCH_SYSTEM_DATA") or DEFAULT_SYSTEM_DATA).expanduser().resolve()


# ---------------------------------------------------------------- performance knobs


def channels_last() -> Optional[bool]:
    """``TLBENCH_CHANNELS_LAST``: force NHWC (yes) or NCHW (no); unset: measured."""
    return flag("TLBENCH_CHANNELS_LAST", None)


def cudnn_benchmark() -> bool:
    """``TLBENCH_CUDNN_BENCHMARK``: cuDNN autotuning, on unless set to a no word."""
    return bool(flag("TLBENCH_CUDNN_BENCHMARK", True))


def cache_budget_bytes() -> int:
    """``TLBENCH_CACHE_BUDGET_MB`` in bytes: the host feature-cache cap (0: the default)."""
    return number("TLBENCH_CACHE_BUDGET_MB", 0) * 2**20


def ray_grouping() -> str:
    """``TLBENCH_RAY_GROUPING``: ``data`` (default) or ``row``; checked by the executor."""
    return text("TLBENCH_RAY_GROUPING") or "data"


def ray_cpus_per_worker() -> int:
    """``TLBENCH_RAY_CPUS_PER_WORKER``: cores (and torch threads) per Ray worker."""
    return number("TLBENCH_RAY_CPUS_PER_WORKER", 1)
