import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TLBENCH_OFFLINE", "1")  # no test may reach the network

from plugin_fixtures import TinyPlugin, write_synthetic_idx  # noqa: E402


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
    import tlbench.registry as registry

    plugin = TinyPlugin(synth)
    original = registry.get_plugin_manager

    def with_tiny(load_entry_points: bool = True):
        pm = original(load_entry_points)
        pm.register(plugin, name="tests:tiny")
        return pm

    monkeypatch.setattr(registry, "get_plugin_manager", with_tiny)
    return plugin
