"""``tlbench plugins`` and ``tlbench check-plugin NAME``: a built-in plugin that adds
them through the ``register_commands`` hook."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tlbench import __version__
from tlbench.api.hookspecs import hookimpl
from tlbench.plugins import registry as plugin_registry


def plugins(
    check: bool = typer.Option(False, help="Also check every item against the contract."),
    data_dir: Optional[str] = typer.Option(None, envvar="TLBENCH_DATA_DIR"),
) -> None:
    """Installed plugins: distribution, version, entry point, items and load status."""
    from tlbench.cli.ui import console

    pm = plugin_registry.get_plugin_manager()
    registry = plugin_registry.collect(pm)
    items = _items_by_plugin(registry)
    loads = dict(plugin_registry.LOADS)
    for name, plugin in pm.list_name_plugin():  # registered by hand (tests, tools)
        if name and name not in loads:
            version = plugin_registry.plugin_version(plugin, name)
            loads[name] = plugin_registry.PluginLoad(
                name, version.rsplit(" ", 1)[0], version.rsplit(" ", 1)[-1], "-", "loaded"
            )
    table = Table(title=f"tlbench {__version__}: plugins")
    for column in ("plugin", "distribution", "version", "entry point", "items", "status"):
        table.add_column(column, overflow="fold")
    if check:
        table.add_column("contract", overflow="fold")
    problems: list[str] = []
    for name, load in loads.items():
        row = [name, load.distribution, load.version, load.entry_point]
        row += [items.get(name, "-"), load.status]
        if check:
            found = _checked(name, load.status, data_dir)
            problems += found
            row.append("ok" if not found else f"{len(found)} violations")
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    if problems:
        from tlbench.run.contract import ContractError

        raise ContractError(problems)


def check_plugin(
    name: str = typer.Argument(..., help="A plugin (dist:entry_point) or distribution name."),
    data_dir: Optional[str] = typer.Option(None, envvar="TLBENCH_DATA_DIR"),
) -> None:
    """Check one plugin's items against the contract (as a run does before training)."""
    from tlbench.cli.ui import console
    from tlbench.testing import check_plugin as check

    report = check(name, data_dir=data_dir)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if report.violations:
        from tlbench.run.contract import ContractError

        raise ContractError(report.violations)
    console.print(f"{', '.join(report.plugins)}: {len(report.checked)} items keep the contract")


def _items_by_plugin(registry) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for kind, entries in registry.items.items():
        for name, entry in entries.items():
            found.setdefault(entry.plugin, []).append(f"{plugin_registry.SINGULAR[kind]} {name}")
    return {plugin: ", ".join(names) for plugin, names in found.items()}


def _checked(name: str, status: str, data_dir: Optional[str]) -> list[str]:
    from tlbench.testing import check_plugin as check

    if status != "loaded":
        return []
    return check(name, data_dir=data_dir).violations


@hookimpl
def register_commands(app: typer.Typer) -> None:
    """``plugins`` and ``check-plugin``: a built-in plugin (BUILTIN_COMMANDS), added the
    way a third-party plugin adds its own commands."""
    app.command("plugins")(plugins)
    app.command("check-plugin")(check_plugin)
