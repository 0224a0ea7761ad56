"""The ``tlbench`` command: the typer app, the commands plugins add, and ``main()``,
which turns tlbench's errors into one line on stderr and an exit code."""

from __future__ import annotations

import sys
import warnings

import pluggy
import typer
from rich.markup import escape

from tlbench import __version__
from tlbench.api.errors import Interrupted, TlbenchError, TlbenchWarning
from tlbench.cli.leaderboard import leaderboard_cmd
from tlbench.cli.listing import list_items
from tlbench.cli.run import run
from tlbench.cli.ui import console, err_console
from tlbench.plugins import registry as plugin_registry
from tlbench.store import interrupts

HELP = (
    "Benchmark transfer-learning strategies: backbones x strategies x datasets, with a leaderboard."
)


def make_app() -> typer.Typer:
    """A fresh app: the core commands, then every plugin's ``register_commands``.

    Built per invocation, so that the commands are those of the plugins installed (or,
    in tests, registered) now; ``bench``, ``plugins`` and ``check-plugin`` come from
    built-in plugins (tlbench.plugins.registry.BUILTIN_COMMANDS) like any other's."""
    app = typer.Typer(
        add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False, help=HELP
    )
    app.callback()(main_options)
    app.command("run")(run)
    app.command("list")(list_items)
    app.command("leaderboard")(leaderboard_cmd)
    register_commands(plugin_registry.get_plugin_manager(), app)
    return app


def register_commands(pm: pluggy.PluginManager, app: typer.Typer) -> None:
    """Every plugin's ``register_commands(app)``, one plugin at a time: one that raises
    is a warning naming it and adds nothing, and a command whose name is taken is dropped
    with a warning, so no plugin replaces ``run`` or another plugin's command."""
    owner = {name: "tlbench" for name in _command_names(app.registered_commands)}
    for plugin, _, call in plugin_registry.each_plugin(pm, "register_commands"):
        before = len(app.registered_commands)
        try:
            call(app=app)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not stop the rest
            plugin_registry.warn_failed(plugin, "commands", exc)
            del app.registered_commands[before:]
            continue
        added = app.registered_commands[before:]
        del app.registered_commands[before:]
        for info, name in zip(added, _command_names(added), strict=True):
            if name in owner:
                warnings.warn(
                    f"tlbench plugin {plugin!r}: command {name!r} is taken (by "
                    f"{owner[name]}); the plugin's was skipped: give it another name.",
                    plugin_registry.PluginLoadWarning,
                    stacklevel=2,
                )
                continue
            owner[name] = f"plugin {plugin!r}"
            app.registered_commands.append(info)


def _command_names(commands: list) -> list[str]:
    """The names typer gives ``commands``: their own, else the function's, dashed."""
    return [c.name or c.callback.__name__.lower().replace("_", "-") for c in commands]


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        with warnings.catch_warnings(), interrupts.handled():
            warnings.showwarning = _OneLineWarnings(warnings.showwarning)
            code = make_app()(standalone_mode=False)  # typer.Exit(n) comes back as n
    except Interrupted as exc:  # SIGINT/SIGTERM: finished records kept, say how to resume
        err_console.print(f"[bold yellow]{exc}[/]", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except TlbenchError as exc:
        _error(escape(str(exc)))
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code (2)
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        if hasattr(exc, "format_message"):  # one line, like tlbench's own errors
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _error(" ".join(exc.format_message().split()) + hint)
        sys.exit(code)
    if isinstance(code, int) and code:
        sys.exit(code)


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


class _OneLineWarnings:
    """tlbench's own warnings (a broken plugin, a corrupt record line): one line each,
    once per command; other warnings keep Python's format."""

    def __init__(self, fallback):
        self.fallback, self.shown = fallback, set()

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        if not issubclass(category, TlbenchWarning):
            self.fallback(message, category, filename, lineno, file, line)
        elif str(message) not in self.shown:
            self.shown.add(str(message))
            err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def version_callback(value: bool) -> None:
    if value:
        console.print(f"tlbench {__version__}", highlight=False)
        raise typer.Exit()


def main_options(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Benchmark transfer-learning strategies: backbones x strategies x datasets."""
