"""Loads plugins and resolves names: the one place a name becomes a spec."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy

from tlbench import hookspecs
from tlbench.errors import DuplicateNameError, TlbenchWarning, UnknownNameError

ENTRY_POINT_GROUP = "tlbench"
KINDS = ("backbones", "strategies", "datasets")
SINGULAR = {"backbones": "backbone", "strategies": "strategy", "datasets": "dataset"}


class PluginLoadWarning(TlbenchWarning):
    """A plugin distribution failed to import; the others still load."""


@dataclass
class Entry:
    """A registered spec and the plugin (distribution or module) that provided it."""

    spec: Any
    plugin: str
    version: str = ""  # "<distribution> <version>" of the plugin's code (plugin_version)


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    items: dict[str, dict[str, Entry]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    load_errors: list[str] = field(default_factory=list)

    def add(self, kind: str, spec: Any, plugin: str, version: str = "") -> None:
        existing = self.items[kind].get(spec.name)
        if existing is not None:
            raise DuplicateNameError(
                f"{SINGULAR[kind]} {spec.name!r} is registered twice: by plugin "
                f"{existing.plugin!r} and by plugin {plugin!r}; uninstall or rename one."
            )
        self.items[kind][spec.name] = Entry(spec, plugin, version)

    def names(self, kind: str) -> list[str]:
        return list(self.items[kind])

    def plugin_of(self, kind: str, name: str) -> str:
        """The plugin that registered ``name`` (for error messages that blame it)."""
        self.get(kind, name)
        return self.items[kind][name.split(":", 1)[0] if kind == "strategies" else name].plugin

    def version_of(self, kind: str, name: str) -> str:
        """``"<distribution> <version>"`` of the plugin that registered ``name``."""
        self.get(kind, name)
        entry = self.items[kind][name.split(":", 1)[0] if kind == "strategies" else name]
        return entry.version or entry.plugin

    def get(self, kind: str, name: str) -> Any:
        """Return the spec registered as ``name`` or raise a did-you-mean error."""
        base = name.split(":", 1)[0] if kind == "strategies" else name
        entry = self.items[kind].get(base)
        if entry is None:
            raise UnknownNameError(SINGULAR[kind], base, self.items[kind])
        return entry.spec

    def resolve_list(self, kind: str, text: str | Iterable[str]) -> list[str]:
        """Parse ``"a,b"`` or ``"all"`` into validated names (order kept, no repeats)."""
        parts = _split_list(text, SINGULAR[kind])
        if parts == ["all"]:
            return self.names(kind)
        for part in parts:
            self.get(kind, part)
        return list(dict.fromkeys(parts))


def _split_list(text: str | Iterable[str], what: str) -> list[str]:
    from tlbench.errors import TlbenchError

    raw = text.split(",") if isinstance(text, str) else list(text)
    parts = [p.strip() for p in raw]
    if not parts or any(not p for p in parts):
        raise TlbenchError(
            f"malformed {what} list {text!r}: expected comma-separated names "
            f"like 'a,b' (no empty items) or 'all'."
        )
    return parts


def get_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh manager with the hookspecs and, unless disabled, every entry point.

    Built-ins are entry points of the tlbench distribution itself, so they load
    exactly like third-party plugins.  ``TLBENCH_LOAD_PLUGINS=0`` skips entry points
    (tests then register what they need by hand).
    """
    pm = pluggy.PluginManager("tlbench")
    pm.add_hookspecs(hookspecs)
    if load_entry_points and os.environ.get("TLBENCH_LOAD_PLUGINS", "1") != "0":
        _load_entry_points(pm)
    return pm


# registered plugin name -> "<distribution> <version>", for plugins loaded from entry points
_ENTRY_POINT_VERSIONS: dict[str, str] = {}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        version = getattr(ep.dist, "version", None) if ep.dist else None
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not stop the rest
            warnings.warn(
                f"tlbench plugin {ep.name!r} from distribution {dist!r} failed to "
                f"import and was skipped: {type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=f"{dist}:{ep.name}")
        _ENTRY_POINT_VERSIONS[f"{dist}:{ep.name}"] = f"{dist} {version or 'unknown'}"


def plugin_version(plugin: Any, name: str) -> str:
    """``"<distribution> <version>"`` of a registered plugin's code (part of config_hash).

    An entry-point plugin: its distribution's name and version.  A plugin registered
    by hand: its own ``__version__``, else its top-level package's ``__version__``, else
    the version of the distribution that installed that package, else ``unversioned``.
    """
    if name in _ENTRY_POINT_VERSIONS:
        return _ENTRY_POINT_VERSIONS[name]
    import sys

    module = getattr(plugin, "__name__", None) if isinstance(plugin, type(sys)) else None
    module = module or getattr(type(plugin), "__module__", None) or "?"
    top = module.split(".", 1)[0]
    own = getattr(plugin, "__version__", None)
    if own is None:
        own = getattr(sys.modules.get(top), "__version__", None)
    if own is not None:
        return f"{top} {own}"
    for dist in _distributions_of(top):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{top} unversioned"


def _distributions_of(top_level: str) -> list[str]:
    global _PACKAGES
    if _PACKAGES is None:
        try:
            _PACKAGES = metadata.packages_distributions()
        except Exception:  # noqa: BLE001 - broken metadata: no version, not a crash
            _PACKAGES = {}
    return list(_PACKAGES.get(top_level, []))


_PACKAGES: dict[str, list[str]] | None = None


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call every registration hook, remembering which plugin gave which item."""
    registry = Registry()
    hooks = {
        "backbones": pm.hook.register_backbones,
        "strategies": pm.hook.register_strategies,
        "datasets": pm.hook.register_datasets,
    }
    for kind, hook in hooks.items():
        for impl in hook.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
            version = plugin_version(impl.plugin, plugin_name)
            for spec in _registered_by(impl, kind, plugin_name):
                registry.add(kind, spec, plugin_name, version)
    return registry


def _registered_by(impl, kind: str, plugin: str) -> list[Any]:
    """The specs one hook implementation registers; a hook that raises or registers the
    wrong type is skipped whole with a warning naming the plugin (the rest still load)."""
    from tlbench.specs import BackboneSpec, DatasetSpec, StrategySpec

    expected = {"backbones": BackboneSpec, "strategies": StrategySpec, "datasets": DatasetSpec}
    specs: list[Any] = []
    try:
        impl.function(specs.append)
        for spec in specs:
            if not isinstance(spec, expected[kind]):
                raise TypeError(
                    f"registered a {type(spec).__name__}, expected a "
                    f"tlbench.specs.{expected[kind].__name__}"
                )
    except Exception as exc:  # noqa: BLE001 - one broken plugin must not stop the rest
        warnings.warn(
            f"tlbench plugin {plugin!r}: its register_{kind} hook failed and its {kind} "
            f"were skipped: {type(exc).__name__}: {exc}",
            PluginLoadWarning,
            stacklevel=3,
        )
        return []
    return specs


def load_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """The registry of all installed plugins (the usual entry point for callers)."""
    return collect(pm or get_plugin_manager())
