"""Hostile paths, names and records: refused before training or skipped, never a crash.

Run names that would leave ``--output`` or break the leaderboard, records files that
are symlinks, directories or FIFOs, ``--benchmarks`` paths that cannot be written,
records that do not validate, and names that would inject Markdown or HTML.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from helpers.cli import TINY_RUN, records_path, run_main, skip_pictures

from tlbench.report import leaderboard
from tlbench.store.records import RECORDS_FILE, RecordRefused, append_record, load_records

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = json.loads(
    (REPO / "results" / "cpu-2core-64px-train2000-e2" / RECORDS_FILE).read_text().splitlines()[0]
)


def outputs(root: Path) -> list[str]:
    return ["--output", str(root / "results"), "--benchmarks", str(root / "B.md")]


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    skip_pictures(monkeypatch)


@pytest.fixture
def alarm():
    """Fail instead of hanging forever (a FIFO opened for reading blocks)."""

    def timeout(signum, frame):
        raise TimeoutError("the command hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def refused(tmp_path: Path, args: list[str], *fragments: str) -> str:
    """Exit 2, one error line holding ``fragments``, nothing trained."""
    result = run_main(TINY_RUN + args + outputs(tmp_path))
    assert result.code == 2, result.out + result.err
    lines = result.err_lines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "cells ran" not in result.out
    return lines[0]


# ---------------------------------------------------------------- run names and paths


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/cron.d", "..", "a\nb", "a`b", "a|b", "<img src=x onerror=alert(1)>", ""],
    ids=["parent", "absolute", "dotdot", "newline", "backtick", "pipe", "html", "empty"],
)
def test_unsafe_run_names_are_refused(tiny_plugin, tmp_path, name):
    refused(tmp_path, ["--run-name", name], f"--run-name {name!r} is invalid", "letters, digits")
    assert not (tmp_path / "x").exists() and not (tmp_path / "results").exists()


def test_run_directory_linked_outside_output_is_refused(tiny_plugin, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "results" / "t").symlink_to(tmp_path / "elsewhere")
    refused(tmp_path, [], "outside --output")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_symlinked_records_file_is_never_followed(tiny_plugin, tmp_path):
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0:root:/root:/bin/bash\n")
    records_path(tmp_path).parent.mkdir(parents=True)
    records_path(tmp_path).symlink_to(target)
    refused(tmp_path, [], f"{records_path(tmp_path)} is a symbolic link", "never follows")
    assert target.read_text() == "root:x:0:0:root:/root:/bin/bash\n"


def test_records_file_that_is_a_directory_is_refused_before_training(tiny_plugin, tmp_path):
    records_path(tmp_path).mkdir(parents=True)
    refused(tmp_path, [], f"{records_path(tmp_path)} is a directory, not a regular file")


def test_records_fifo_neither_hangs_dry_run_nor_leaderboard(tiny_plugin, tmp_path, alarm):
    records_path(tmp_path).parent.mkdir(parents=True)
    os.mkfifo(records_path(tmp_path))
    refused(tmp_path, ["--dry-run"], "is a FIFO, not a regular file")

    board = ["leaderboard", "--output", str(tmp_path / "results"), "--path", str(tmp_path / "B.md")]
    result = run_main(board)
    assert result.code == 0, result.err
    (warning,) = [line for line in result.err_lines() if line.startswith("warning:")]
    assert "skipped run" in warning and "is a FIFO" in warning
    assert "No results yet" in (tmp_path / "B.md").read_text()


def test_leaderboard_check_refuses_a_fifo_path_instead_of_hanging(tiny_plugin, tmp_path, alarm):
    fifo = tmp_path / "B.md"
    os.mkfifo(fifo)
    check = ["leaderboard", "--check", "--output", str(tmp_path / "results"), "--path", str(fifo)]
    result = run_main(check)
    assert result.code == 2 and f"{fifo} is a FIFO, not a regular file" in result.err, result.err


def test_benchmarks_path_is_checked_before_training(tiny_plugin, tmp_path):
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    out = ["--output", str(tmp_path / "results")]
    for path, fragment in (
        (tmp_path / "a-dir", "is a directory"),
        (tmp_path / "a-file" / "B.md", "is not a directory"),
    ):
        result = run_main(TINY_RUN + out + ["--benchmarks", str(path)])
        assert result.code == 2 and fragment in result.err, result.err
        assert "cells ran" not in result.out
    result = run_main(TINY_RUN + out + ["--benchmarks", str(tmp_path / "new" / "B.md")])
    assert result.code == 0, result.err  # a missing folder is made, like --output's
    assert (tmp_path / "new" / "B.md").is_file()


def test_run_output_never_touches_the_current_directory(tiny_plugin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("BENCHMARKS.md").write_text("the repository's leaderboard\n")
    result = run_main(TINY_RUN + ["--output", "elsewhere"])
    assert result.code == 0, result.err
    assert Path("BENCHMARKS.md").read_text() == "the repository's leaderboard\n"
    assert (tmp_path / "elsewhere" / "BENCHMARKS.md").is_file()


def test_every_bad_option_is_listed_in_one_message(tiny_plugin, tmp_path):
    args = ["--epochs", "0", "--head-hidden", "-1", "--seeds", "-1", "--backbones", "tinny"]
    line = refused(tmp_path, args + ["--run-name", "../x"], "error: 4 problems: (1) ")
    for fragment in (
        "--epochs 0 is out of range",
        "--head-hidden -1 is out of range",
        "--seeds '-1' is invalid",
        "unknown backbone 'tinny'",
        "--run-name '../x' is invalid",
    ):
        assert fragment in line


# ---------------------------------------------------------------- records that do not validate


def line_with(number: int, **changes) -> str:
    record = {**TEMPLATE, "config_hash": f"{number:016x}", **changes}
    return json.dumps(record, allow_nan=True)


BAD_LINES = [
    (line_with(2, final_accuracy="90"), "field final_accuracy: Input should be a valid number"),
    (line_with(3, final_accuracy=1e308), "field final_accuracy: Input should be less than"),
    (line_with(4, final_accuracy=float("inf")), "field final_accuracy is inf"),
    (line_with(5, curve={"a": 1}), "field curve: Input should be a valid list"),
    (line_with(6, status=3), "field status: Input should be 'ok', 'diverged' or 'failed'"),
    (json.dumps({k: v for k, v in TEMPLATE.items() if k != "dataset"}), "field dataset is missing"),
    (line_with(8, device="\ud800"), "field device holds a lone surrogate"),
    (line_with(9, ece=float("nan")), "field ece is nan"),
]


def test_invalid_records_are_reported_with_file_line_and_field(tiny_plugin, tmp_path):
    run = tmp_path / "results" / "reference"
    run.mkdir(parents=True)
    path = run / RECORDS_FILE
    path.write_text("\n".join([json.dumps(TEMPLATE)] + [line for line, _ in BAD_LINES]) + "\n")

    board = ["leaderboard", "--output", str(tmp_path / "results"), "--path", str(tmp_path / "B.md")]
    result = run_main(board)
    assert result.code == 0, result.err
    warnings = [line for line in result.err_lines() if line.startswith("warning:")]
    assert len(warnings) == len(BAD_LINES), result.err
    for number, (_, field) in enumerate(BAD_LINES, start=2):
        assert any(f"{path}:{number}: skipped" in w and field in w for w in warnings), field
    text = (tmp_path / "B.md").read_text()
    assert "efficientnet_lite0" in text and "nan" not in text
    assert [r["config_hash"] for r in latest(run)] == [TEMPLATE["config_hash"]]

    later = run_main(TINY_RUN + ["--strategies", "linear_probe"] + outputs(tmp_path))
    assert later.code == 0, later.err  # the end of a later run renders the same records


def latest(run: Path) -> list[dict]:
    with pytest.warns(UserWarning):
        return load_records(run)


def test_non_finite_numbers_are_refused_on_write(tmp_path):
    path = tmp_path / RECORDS_FILE
    path.write_text(json.dumps(TEMPLATE) + "\n")
    before = path.read_bytes()
    with pytest.raises(RecordRefused, match="field final_accuracy is nan") as caught:
        append_record(tmp_path, {**TEMPLATE, "final_accuracy": float("nan")})
    assert caught.value.exit_code == 1
    assert path.read_bytes() == before


# ---------------------------------------------------------------- Markdown and HTML


def test_names_cannot_inject_markdown_or_html(tmp_path):
    run = tmp_path / "results" / "evil|<b>run<b>`x`"
    run.mkdir(parents=True)
    hostile = {
        "backbone": "evil|name\n# injected heading",
        "strategy": "`code` <img src=x onerror=alert(1)>",
        "weights": "file:/tmp/a|b.pth",
        "device": "cpu\n## also injected",
        "data_source": "[link](javascript:alert(1))",
    }
    record = {**TEMPLATE, **hostile}
    (run / RECORDS_FILE).write_text(json.dumps(record) + "\n")
    text = leaderboard.build(tmp_path / "results", tmp_path / "B.md")

    assert "<img" not in text and "<b>" not in text
    assert not re.search(r"(?<!\\)\]\(javascript", text)  # the link stays text: \](
    assert not any(line.startswith(("# injected", "## also")) for line in text.splitlines())
    tables = [line for line in text.splitlines() if line.startswith("|")]
    assert tables
    unescaped = [len(re.findall(r"(?<!\\)\|", line)) for line in tables]
    header_cells = unescaped[0]
    assert all(count == header_cells for count in unescaped[: len(unescaped)]), unescaped
    assert "evil\\|name # injected heading" in text


def test_the_header_shows_the_evaluations_that_ran_not_only_those_asked():
    """--evals-per-epoch above the steps per epoch is capped by the trainer: the leaderboard
    header says how many points per epoch the curves hold, and what was asked."""
    from tlbench.report.run_header import _evals_setting

    capped = [{"curve": [[e / 3, 50.0] for e in range(1, 7)], "epoch_budget": 2}]
    assert _evals_setting(100, capped) == "3 (100 asked; capped at one per training step)"
    full = [{"curve": [[e / 4, 50.0] for e in range(1, 9)], "epoch_budget": 2}]
    assert _evals_setting(4, full) == "4"


def test_ctrl_c_while_the_cli_imports_is_one_line_and_exit_130(monkeypatch, capsys):
    """The console script imports torch before any handler of tlbench's can run: a Ctrl-C
    then is one line and exit 130, not a traceback from inside an import."""
    import tlbench.cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(tlbench.cli.importlib, "import_module", interrupted)
    with pytest.raises(SystemExit) as stopped:
        tlbench.cli.main()
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip() == tlbench.cli.STARTUP_INTERRUPTED
