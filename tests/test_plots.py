"""Leaderboard statistics and pictures, from hand-made records (no training needed)."""

from __future__ import annotations

import pytest

from tlbench.report import leaderboard, plots
from tlbench.store.records import append_record

CLASSES = 10


def record(strategy, seed, acc, epochs, weights="imagenet", params=1000, speed=100.0, **extra):
    """A plausible ok record; the curve rises to ``acc``, the confusion matches it roughly."""
    hits = round(acc)
    confusion = [[hits if i == j else (100 - hits) // (CLASSES - 1) for j in range(CLASSES)]
                 for i in range(CLASSES)]  # fmt: skip
    return {
        "backbone": "bb",
        "strategy": strategy,
        "dataset": "mnist",
        "seed": seed,
        "weights": weights,
        "status": "ok",
        "config_hash": f"{strategy}-{weights}-{seed}",
        "config": {"epochs": 3, "batch_size": 64, "lr": 0.001, "evals_per_epoch": 4},
        "resolution": 32,
        "threshold": 95.0,
        "device": "cpu (test)",
        "versions": {"torch": "x"},
        "split_sizes": {"train": 300, "val": 100, "test": 1000},
        "data_source": "test",
        "weights_source": weights,
        "epochs_to_threshold": epochs,
        "epoch_budget": 3,
        "final_accuracy": acc,
        "trainable_params": params,
        "train_throughput": speed,
        "infer_throughput": 1000.0,
        "wall_seconds": 10.0,
        "curve": [[0.25 * (i + 1), round(min(acc, 60 + 4 * i), 2)] for i in range(12)],
        "per_class": {"f1": [acc / 100] * CLASSES},
        "confusion": confusion,
        "confidence_correct": 0.97,
        "confidence_wrong": 0.7,
        "ece": 0.02,
        **extra,
    }


RECORDS = [
    record("full", 0, 97.0, 1.0, params=5000, speed=50.0),
    record("full", 1, 98.0, 1.5, params=5000, speed=52.0),
    record("linear_probe", 0, 95.0, 2.5, params=170, speed=400.0),
    record("linear_probe", 1, 96.5, None, params=170, speed=410.0),
    record("scratch", 0, 90.0, None, weights="random", params=5000, speed=51.0),
    record("scratch", 1, 91.0, None, weights="random", params=5000, speed=49.0),
]


@pytest.fixture
def results(tmp_path):
    run = tmp_path / "results" / "run1"
    run.mkdir(parents=True)
    for r in RECORDS:
        append_record(run, r)
    return tmp_path / "results", tmp_path / "BENCHMARKS.md"


def table_line(text: str, strategy: str, section: int = 0) -> list[str]:
    tables = text.split("## Run")[1].split("Paired comparison with")
    line = next(x for x in tables[section].splitlines() if f"| {strategy} " in x)
    return [c.strip() for c in line.strip("|").split("|")]


def test_tables_show_mean_std_ci_and_censoring(results):
    output, board = results
    text = leaderboard.build(output, board)
    full = table_line(text, "full")
    # 97, 98: mean 97.5, std 0.707107, half width 12.706205 * 0.707107 / sqrt(2) = 6.353102
    # no test_correct in these records: the t interval, marked (t)
    assert full[7:9] == ["97.50 ± 0.71", "[91.15, 103.85] (t)"]
    assert full[5:7] == ["1.25 ± 0.35", "[-1.93, 4.43]"]  # 1.0, 1.5: half 3.176551
    assert full[3:5] == ["–", "–"]  # no bn_policy, no lr_chosen
    probe = table_line(text, "linear_probe")
    assert probe[5:7] == ["median > 2.75 (1/2 not reached in 3)", "–"]  # (2.5 + >3) / 2
    scratch = table_line(text, "scratch")
    assert scratch[2] == "random" and scratch[5:7] == ["not reached in 3 (2/2)", "–"]


def test_paired_comparison_with_full(results):
    output, board = results
    text = leaderboard.build(output, board)
    probe = table_line(text, "linear_probe", section=1)
    # differences -2.0, -1.5: mean -1.75, std 0.353553, half 12.706205*0.353553/sqrt(2)
    assert probe[3:8] == [
        "full [imagenet]",
        "-1.75 ± 0.35",
        "[-4.93, +1.43] (t)",
        "2",
        "not enough evidence (2 seeds)",
    ]
    scratch = table_line(text, "scratch", section=1)  # random weights vs full [imagenet]
    assert scratch[3:5] == ["full [imagenet]", "-7.00 ± 0.00"]
    # zero spread over 2 seeds: the CI [-7, -7] is no evidence, and 2 seeds give no verdict
    assert scratch[7] == "not enough evidence (2 seeds)"


def test_pictures_are_written_linked_and_checked(results):
    output, board = results
    leaderboard.write(output, board)
    text = board.read_text()
    links = [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]
    assert links == [
        "results/run1/plots/mnist-curves-bb.png",
        "results/run1/plots/mnist-tradeoff.png",
        "results/run1/plots/mnist-confusion.png",
        "results/run1/plots/mnist-confidence.png",
    ]
    for link in links:
        assert (board.parent / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leaderboard.build(output, board) == text  # deterministic
    assert not leaderboard.is_stale(output, board)
    (board.parent / links[1]).unlink()
    assert leaderboard.is_stale(output, board)  # a linked picture is missing


def test_best_cell_and_row_labels():
    pictures = plots.pictures(RECORDS)
    confusion = next(p for p in pictures if p.kind == "confusion")
    assert confusion.rows[0].strategy == "full"
    assert [confusion.label(r) for r in pictures[1].rows] == [
        "full",
        "linear_probe",
        "scratch [random]",
    ]


def test_pareto_front_by_hand():
    points = [(100, 90.0), (1000, 95.0), (1000, 93.0), (5000, 94.0), (50, 80.0)]
    # fewer parameters is better: (50, 80) < (100, 90) < (1000, 95); (5000, 94) dominated
    assert plots.pareto_front(points, lower_x_is_better=True) == [
        (50, 80.0),
        (100, 90.0),
        (1000, 95.0),
    ]
    # more throughput is better: (5000, 94) then (1000, 95)
    assert plots.pareto_front(points, lower_x_is_better=False) == [(5000, 94.0), (1000, 95.0)]


def test_tick_labels_are_short():
    assert [plots.human(v) for v in (170, 2000, 12810, 4.6e6)] == ["170", "2k", "12.8k", "4.6M"]


def test_class_names_come_from_the_records_not_a_plugin(monkeypatch):
    """Drawing needs no registry: the names a record carries, else class indices."""
    import tlbench.plugins.registry as registry

    monkeypatch.setattr(registry, "load_registry", lambda *a, **k: pytest.fail("registry read"))
    named = record("full", 0, 97.0, 1.0, class_names=[f"c{i}" for i in range(CLASSES)])
    assert plots.class_names([RECORDS[0], named], CLASSES) == tuple(f"c{i}" for i in range(10))
    assert plots.class_names(RECORDS, CLASSES) == tuple(str(i) for i in range(CLASSES))
    assert plots.class_names([named], 3) == ("0", "1", "2")  # names that do not fit: indices


def test_the_schema_accepts_class_names_as_a_list_of_strings():
    from tlbench.store.schema import check

    assert check(record("full", 0, 97.0, 1.0, class_names=["a", "b"])) is None
    assert check(record("full", 0, 97.0, 1.0, class_names="ab")) is not None


def test_a_cell_record_carries_its_dataset_class_names(tiny_plugin, tmp_path):
    from helpers.tiny_run import run_tiny

    stored = run_tiny(tmp_path, "linear_probe", epochs=1)
    assert stored["status"] == "ok", stored.get("error")
    assert stored["class_names"] == [str(i) for i in range(10)]  # synth: no names, indices


def test_records_without_class_names_take_the_callers_names():
    """Records written before they carried class names are labelled from the registry the
    CLI passes in; a record's own names win, and an unknown dataset stays as it is."""
    from tlbench.report.leaderboard import with_class_names

    known = {"fashion": ["T-shirt/top", "Trouser"]}
    old = {"dataset": "fashion", "status": "ok"}
    assert with_class_names(old, known)["class_names"] == ["T-shirt/top", "Trouser"]
    own = {**old, "class_names": ["a", "b"]}
    assert with_class_names(own, known)["class_names"] == ["a", "b"]
    assert "class_names" not in with_class_names({"dataset": "mnist"}, known)
