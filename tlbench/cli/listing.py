"""``tlbench list KIND``: the registered items of one kind, the plugin each came from,
and whether it can run here (weights and data found)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from tlbench.api.errors import TlbenchError
from tlbench.cli.ui import console
from tlbench.plugins import registry as plugin_registry
from tlbench.plugins.registry import KINDS


def list_items(
    kind: str = typer.Argument(..., help="backbones, strategies or datasets."),
    data_dir: Optional[str] = typer.Option(None, envvar="TLBENCH_DATA_DIR"),
) -> None:
    """Show registered items, the plugin each came from, and whether it can run here."""
    if kind not in KINDS:
        raise TlbenchError(f"cannot list {kind!r}: choose one of {', '.join(KINDS)}.")
    registry = plugin_registry.load_registry()
    registry.check_kind(kind)  # two plugins with one name: an error for this kind only
    table = Table(title=f"registered {kind}")
    for column in ("name", "plugin", "description", "here"):
        table.add_column(column, overflow="fold")
    for name, entry in registry.items[kind].items():
        table.add_row(
            name, entry.plugin, entry.spec.description, _status(kind, entry.spec, data_dir)
        )
    console.print(table)


def _status(kind: str, spec, data_dir: Optional[str]) -> str:
    if kind == "backbones":
        reason = spec.imagenet_unavailable()
        return (
            f"imagenet weights: {spec.imagenet_sources[0]}"
            if reason is None
            else f"imagenet weights missing ({reason}); --weights random works"
        )
    if kind == "datasets":
        try:
            return f"data: {spec.probe(data_dir)}"
        except TlbenchError as exc:
            return f"no data: {exc}"
    return "ready" + (f" (default arg {spec.default_arg})" if spec.default_arg else "")
