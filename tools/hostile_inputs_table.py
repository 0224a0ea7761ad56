"""Issue 11's hostile inputs through the real CLI, side by side for two checkouts.

    python tools/hostile_inputs_table.py "before=/path/to/old/checkout" "now=."

Each case runs ``python -m tlbench`` with ``PYTHONPATH`` set to the checkout, in a fresh
temporary output, and the table gives the exit code, the first line of stderr (or the
last line of a traceback), and what survived.  Prints a Markdown table.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PY = sys.executable
CODE = dict(arg.split("=", 1) for arg in sys.argv[1:]) or {"now": "."}
CODE = {label: str(Path(path).resolve()) for label, path in CODE.items()}
REPO = Path(__file__).resolve().parent.parent
BASE = ["run", "--datasets", "mnist", "--strategies", "full", "--seeds", "1", "--dry-run"]


def fresh():
    d = Path(tempfile.mkdtemp(prefix="case-"))
    return d


def records_dir(out, run="r"):
    p = out / run
    p.mkdir(parents=True, exist_ok=True)
    return p / "records.jsonl"


def real_run(out, benchmarks):
    """A real one-cell run (linear_probe on 200 mnist images, 1 epoch) into ``out``."""
    return [
        *("run", "--datasets", "mnist", "--strategies", "linear_probe", "--seeds", "1"),
        *("--epochs", "1", "--train-size", "200", "--val-size", "50", "--test-size", "50"),
        *("--no-reference", "--run-name", "r", "--output", str(out)),
        *("--benchmarks", str(benchmarks)),
    ]


def case_symlink(out):
    target = out / "passwd"
    target.write_text("root:x:0:0\n")
    rec = records_dir(out)
    rec.symlink_to(target)
    return (
        real_run(out, str(out / "B.md")),
        lambda: (
            "passwd " + ("unchanged" if target.read_text() == "root:x:0:0\n" else "APPENDED TO")
        ),
    )


def case_dir(out):
    records_dir(out).mkdir()
    return BASE[:-1] + [
        "--epochs",
        "1",
        "--train-size",
        "200",
        "--val-size",
        "50",
        "--test-size",
        "50",
        "--no-reference",
        "--run-name",
        "r",
        "--output",
        str(out),
        "--benchmarks",
        str(out / "B.md"),
    ], None


def case_fifo(out):
    os.mkfifo(records_dir(out))
    return BASE + ["--run-name", "r", "--output", str(out)], None


def case_bad_record(out):
    rec = records_dir(out)
    good = json.loads(open(REPO / "results/mainjob/eta3/records.jsonl").readline())
    rec.write_text(json.dumps({**good, "final_accuracy": "high"}) + "\n")
    return ["leaderboard", "--output", str(out), "--path", str(out / "B.md")], None


def case_check_fifo(out):
    os.mkfifo(out / "B.md")
    return ["leaderboard", "--check", "--output", str(out), "--path", str(out / "B.md")], None


def case_bench_under_file(out):
    (out / "a-file").write_text("x")
    return real_run(
        out, str(out / "a-file" / "B.md")
    ), lambda: "records " + ("written" if (out / "r" / "records.jsonl").exists() else "none")


def opts(*extra):
    return lambda out: (BASE + ["--output", str(out)] + list(extra), None)


CASES = [
    ("--run-name ../x", opts("--run-name", "../x")),
    ("--run-name with | and a newline", opts("--run-name", "a|b\nc")),
    ("--head-hidden -1", opts("--head-hidden", "-1")),
    ("--val-size 0", opts("--val-size", "0")),
    ("23-digit seed", opts("--seeds", "1" + "0" * 22)),
    (
        "partial:\u00b2",
        lambda out: (
            [
                "run",
                "--datasets",
                "mnist",
                "--strategies",
                "partial:\u00b2",
                "--dry-run",
                "--output",
                str(out),
            ],
            None,
        ),
    ),
    ("--threshold mnist=90,mnist=50", opts("--threshold", "mnist=90,mnist=50")),
    (
        "--evals-per-epoch 100, 4 steps/epoch",
        opts("--evals-per-epoch", "100", "--train-size", "200", "--batch-size", "64"),
    ),
    (
        "three bad options at once",
        opts("--head-hidden", "-1", "--val-size", "0", "--threshold", "101"),
    ),
    ("--benchmarks under a regular file (a real run)", case_bench_under_file),
    ("records.jsonl -> symlink to a passwd copy", case_symlink),
    ("records.jsonl is a directory", case_dir),
    ("records.jsonl is a FIFO (--dry-run)", case_fifo),
    ("record with accuracy as a string (leaderboard)", case_bad_record),
    ("leaderboard --check --path FIFO", case_check_fifo),
]


def run(code, args):
    env = {**os.environ, "PYTHONPATH": code, "TLBENCH_OFFLINE": "1", "COLUMNS": "200"}
    try:
        p = subprocess.run(
            [PY, "-m", "tlbench", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=tempfile.gettempdir(),
        )
        err = p.stderr.strip().splitlines()
        tb = any(line.startswith("Traceback") for line in err)
        last = next((line for line in reversed(err) if line.strip()), "")
        first = err[0] if err else ""
        msg = ("TRACEBACK: " + last) if tb else (first or "(no message)")
        return p.returncode, msg[:150]
    except subprocess.TimeoutExpired:
        return "hang", "killed after 60 s"


rows = []
for name, make in CASES:
    row = [name]
    for code in CODE.values():
        out = fresh()
        args, survived = make(out)
        rc, msg = run(code, args)
        extra = f"; {survived()}" if survived else ""
        row.append(f"{rc}: {msg}{extra}")
        shutil.rmtree(out, ignore_errors=True)
    rows.append(row)
print("| input or fault | " + " | ".join(f"{label} (exit: message)" for label in CODE) + " |")
print("| --- |" + " --- |" * len(CODE))
for r in rows:
    print("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |")
