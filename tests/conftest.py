import os
from pathlib import Path

import pytest

os.environ.setdefault("TLBENCH_OFFLINE", "1")  # no test may reach the network
# Hermetic: installed third-party plugins are not loaded (the built-ins always are), so
# counts like the dry run's "56 planned cells" hold whatever else is installed.  Tests of
# entry-point loading unset it (tests/test_plugins.py).
os.environ.setdefault("TLBENCH_LOAD_PLUGINS", "0")

from helpers.plugins import TinyPlugin, write_synthetic_idx  # noqa: E402


@pytest.fixture
def synth_dir(tmp_path_factory) -> Path:
    return write_synthetic_idx(tmp_path_factory.mktemp("synth"))


@pytest.fixture
def tiny_plugin(synth_dir, monkeypatch):
    """Registers the tiny test plugin for every plugin manager made during the test."""
    yield register_tiny(monkeypatch, synth_dir)


def register_tiny(monkeypatch: pytest.MonkeyPatch, synth: Path) -> TinyPlugin:
    """The tiny plugin (data in ``synth``) in every plugin manager made from now until
    ``monkeypatch`` is undone; module-scoped fixtures pass a ``MonkeyPatch.context()``."""
    return register_plugin(monkeypatch, TinyPlugin(synth), "tests:tiny")


def register_plugin(monkeypatch: pytest.MonkeyPatch, plugin, name: str):
    """``plugin`` registered (as ``name``) in every plugin manager made from now until
    ``monkeypatch`` is undone, on top of whatever the current factory registers."""
    import tlbench.plugins.registry as registry

    original = registry.get_plugin_manager

    def with_plugin(load_entry_points: bool = True):
        pm = original(load_entry_points)
        pm.register(plugin, name=name)
        return pm

    monkeypatch.setattr(registry, "get_plugin_manager", with_plugin)
    return plugin
