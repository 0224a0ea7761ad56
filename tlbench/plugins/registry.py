"""Loads plugins and resolves names: the one place a name becomes a spec."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable, Iterator

import pluggy

from tlbench.api import hookspecs
from tlbench.api.errors import DuplicateNameError, TlbenchWarning, UnknownNameError

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

    # (kind, name) -> the error for a name two plugins registered: raised only when that
    # name (or its whole kind) is used, so other commands and kinds keep working
    conflicts: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, kind: str, spec: Any, plugin: str, version: str = "") -> None:
        existing = self.items[kind].get(spec.name)
        if existing is not None:
            self.conflicts.setdefault(
                (kind, spec.name),
                f"{SINGULAR[kind]} {spec.name!r} is registered twice: by plugin "
                f"{existing.plugin!r} and by plugin {plugin!r}; uninstall or rename one "
                f"(or drop one for now: TLBENCH_DISABLE_PLUGINS={plugin}).",
            )
            return
        self.items[kind][spec.name] = Entry(spec, plugin, version)

    def check_kind(self, kind: str) -> None:
        """Raise the first duplicate-name error of ``kind``, if any."""
        for (conflict_kind, _), message in self.conflicts.items():
            if conflict_kind == kind:
                raise DuplicateNameError(message)

    def names(self, kind: str) -> list[str]:
        self.check_kind(kind)
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
        if (kind, base) in self.conflicts:
            raise DuplicateNameError(self.conflicts[(kind, base)])
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
    from tlbench.api.errors import TlbenchError

    raw = text.split(",") if isinstance(text, str) else list(text)
    parts = [p.strip() for p in raw]
    if not parts or any(not p for p in parts):
        raise TlbenchError(
            f"malformed {what} list {text!r}: expected comma-separated names "
            f"like 'a,b' (no empty items) or 'all'."
        )
    return parts


BUILTIN_PLUGINS = (
    ("backbones", "tlbench.builtin.backbones"),
    ("strategies", "tlbench.builtin.strategies"),
    ("datasets", "tlbench.builtin.datasets"),
)
"""The built-in plugins: also entry points of the tlbench distribution, registered by
module here so that they load even when entry points are off or the distribution's
metadata is missing (datasette's DEFAULT_PLUGINS)."""

BUILTIN_COMMANDS = (
    ("bench", "tlbench.perf.commands"),
    ("plugins", "tlbench.cli.plugins"),
)
"""Built-in plugins that add commands (``register_commands``).  Named, never imported by
this layer: like any entry point they are loaded by name, and may sit in a higher layer
(tests/test_architecture.py) as a third-party plugin does.  Only their own names disable
them: ``TLBENCH_DISABLE_PLUGINS=tlbench`` drops the built-in items, not ``tlbench
plugins``."""


@dataclass
class PluginLoad:
    """One plugin's load outcome, for ``tlbench plugins``."""

    name: str  # the registered name, <distribution>:<entry point>
    distribution: str
    version: str
    entry_point: str  # "name = module" as declared
    status: str  # "loaded", "disabled", "failed: <error>", "duplicate (already loaded)"


LOADS: dict[str, PluginLoad] = {}
"""Outcome of every plugin the last get_plugin_manager() considered, by name."""


def disabled_plugins() -> set[str]:
    """``TLBENCH_DISABLE_PLUGINS=name,...``: plugin names (``dist:ep``), entry point
    names or distribution names that are not loaded (``tlbench`` drops the built-ins)."""
    text = os.environ.get("TLBENCH_DISABLE_PLUGINS", "")
    return {part.strip() for part in text.split(",") if part.strip()}


def _is_disabled(disabled: set[str], dist: str, ep_name: str) -> bool:
    return bool(disabled & {dist, ep_name, f"{dist}:{ep_name}"})


def get_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh manager with the hookspecs, the built-ins and, unless disabled, every
    entry point.

    Built-ins always load (``TLBENCH_DISABLE_PLUGINS=tlbench`` drops them);
    ``TLBENCH_LOAD_PLUGINS=0`` skips third-party entry points, so tests see only the
    built-ins and what they register; ``TLBENCH_DISABLE_PLUGINS=a,b`` drops single
    plugins (by plugin, entry point or distribution name), e.g. one of two that
    register the same name.
    """
    pm = pluggy.PluginManager("tlbench")
    pm.add_hookspecs(hookspecs)
    LOADS.clear()
    disabled = disabled_plugins()
    _register_builtins(pm, BUILTIN_PLUGINS, disabled)
    _register_builtins(pm, BUILTIN_COMMANDS, disabled - {"tlbench"})
    if load_entry_points and os.environ.get("TLBENCH_LOAD_PLUGINS", "1") != "0":
        _load_entry_points(pm, disabled)
    return pm


def _register_builtins(pm: pluggy.PluginManager, builtins, disabled: set[str]) -> None:
    import importlib

    from tlbench import __version__

    for ep_name, module in builtins:
        name = f"tlbench:{ep_name}"
        load = PluginLoad(name, "tlbench", __version__, f"{ep_name} = {module}", "loaded")
        LOADS[name] = load
        if _is_disabled(disabled, "tlbench", ep_name):
            load.status = "disabled"
            continue
        pm.register(importlib.import_module(module), name=name)
        _ENTRY_POINT_VERSIONS[name] = f"tlbench {__version__}"


# registered plugin name -> "<distribution> <version>", for plugins loaded from entry points
_ENTRY_POINT_VERSIONS: dict[str, str] = {}


def _load_entry_points(pm: pluggy.PluginManager, disabled: set[str] = frozenset()) -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        version = getattr(ep.dist, "version", None) if ep.dist else None
        name = f"{dist}:{ep.name}"
        if name in LOADS and dist == "tlbench":
            continue  # a built-in, registered by module already (or disabled)
        value = getattr(ep, "value", "?")
        load = PluginLoad(name, dist, version or "unknown", f"{ep.name} = {value}", "loaded")
        LOADS[name] = load
        if _is_disabled(disabled, dist, ep.name):
            load.status = "disabled"
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not stop the rest
            load.status = f"failed: {type(exc).__name__}: {exc}"
            warnings.warn(
                f"tlbench plugin {ep.name!r} from distribution {dist!r} failed to "
                f"import and was skipped: {type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        if pm.is_registered(plugin):
            load.status = "duplicate (already loaded)"
            continue
        pm.register(plugin, name=name)
        _ENTRY_POINT_VERSIONS[name] = f"{dist} {version or 'unknown'}"


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
    for kind in KINDS:
        for name, plugin, call in each_plugin(pm, f"register_{kind}"):
            version = plugin_version(plugin, name)
            for spec in _registered_by(call, kind, name):
                registry.add(kind, spec, name, version)
    return registry


def each_plugin(
    pm: pluggy.PluginManager, hook_name: str
) -> Iterator[tuple[str, Any, Callable[..., Any]]]:
    """``(name, plugin, call)`` for each plugin that implements ``hook_name``, in
    registration order; ``call(**kwargs)`` runs that plugin's implementations alone,
    through pluggy (only the arguments each names, its wrappers, tracing, monitoring).

    One call per plugin rather than one ``pm.hook.<name>(register=...)`` for all: a single
    call stops at the first implementation that raises, so one broken plugin would hide
    the items of every plugin after it, and the shared ``register`` callback could not
    tell which plugin is calling it (errors and ``tlbench list`` name the plugin)."""
    hook = getattr(pm.hook, hook_name)
    implementers = dict.fromkeys(impl.plugin for impl in hook.get_hookimpls())
    for plugin in implementers:
        others = [p for p in pm.get_plugins() if p is not plugin]
        name = pm.get_name(plugin) or repr(plugin)
        yield name, plugin, pm.subset_hook_caller(hook_name, remove_plugins=others)


def warn_failed(plugin: str, kind: str, exc: Exception) -> None:
    """A plugin's registration hook raised: say which, and go on without it."""
    warnings.warn(
        f"tlbench plugin {plugin!r}: its register_{kind} hook failed and its {kind} "
        f"were skipped: {type(exc).__name__}: {exc}",
        PluginLoadWarning,
        stacklevel=4,
    )


def _registered_by(call, kind: str, plugin: str) -> list[Any]:
    """The specs one plugin registers; a hook that raises or registers the wrong type
    is skipped whole with a warning naming the plugin (the rest still load)."""
    from tlbench.api.specs import BackboneSpec, DatasetSpec, StrategySpec

    expected = {"backbones": BackboneSpec, "strategies": StrategySpec, "datasets": DatasetSpec}
    specs: list[Any] = []
    try:
        call(register=specs.append)
        for spec in specs:
            if not isinstance(spec, expected[kind]):
                raise TypeError(
                    f"registered a {type(spec).__name__}, expected a "
                    f"tlbench.api.specs.{expected[kind].__name__}"
                )
    except Exception as exc:  # noqa: BLE001 - one broken plugin must not stop the rest
        warn_failed(plugin, kind, exc)
        return []
    return specs


def load_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """The registry of all installed plugins (the usual entry point for callers)."""
    return collect(pm or get_plugin_manager())
