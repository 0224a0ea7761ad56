"""The peer-validation section renders from hand-made JSON files (no fastai, no training)."""

from __future__ import annotations

import json

from tlbench.report import leaderboard
from tlbench.report.peer import peer_section


def result(dataset="mnist", logreg=(92.0, 91.0), fastai=(60.0, 50.0), lp=(90.5, 89.5),
           full=(95.0, 94.0), two=(93.0, 92.0)):  # fmt: skip
    def strategy(accs, prefix):
        return {
            "seeds": [0, 1],
            "test_accuracy": list(accs),
            "config_hash": [f"{prefix}0", f"{prefix}1"],
            "lr": [{"config_lr": 0.001}, {"config_lr": 0.001}],
        }

    return {
        "schema": 1,
        "dataset": dataset,
        "backbone": "efficientnet_lite0",
        "weights": "imagenet",
        "settings": {
            "train_size": 2000,
            "val_size": 500,
            "test_size": 1000,
            "split_sizes": {"train": 2000, "val": 500, "test": 1000},
            "epochs": 2,
            "batch_size": 64,
            "resolution": 64,
            "seeds": [0, 1],
            "device": "cpu (2 cores)",
            "data_source": "test",
        },
        "versions": {"fastai": "2.8.12", "sklearn": "1.9.1"},
        "logreg": {
            "standardize": False,
            "C_grid": [0.001, 1.0, 1000.0],
            "per_seed": [{"seed": 0, "chosen_C": 0.1}, {"seed": 1, "chosen_C": 0.0316}],
            "test_accuracy": list(logreg),
        },
        "fastai": {
            "recipe": "Learner.fine_tune(1, base_lr, freeze_epochs=1)",
            "base_lr": [0.002],
            "lr_find": False,
            "test_accuracy": list(fastai),
        },
        "tlbench": {
            "strategies": {
                "linear_probe": strategy(lp, "lp"),
                "full": strategy(full, "fu"),
                "two_stage": strategy(two, "ts"),
            }
        },
    }


def write(tmp_path, name, data):
    folder = tmp_path / "peer"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def rows_of(lines):
    return {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines
            if line.startswith("| ") and "---" not in line and "method" not in line}  # fmt: skip


def test_no_peer_results_no_section(tmp_path):
    assert peer_section(tmp_path) == []
    (tmp_path / "peer").mkdir()
    assert peer_section(tmp_path) == []


def test_targets_met(tmp_path):
    write(tmp_path, "cpu-mnist.json", result())
    lines = peer_section(tmp_path)
    assert lines[0] == "## Peer validation"
    assert any(line.startswith("### mnist: efficientnet_lite0 (imagenet), 64 px") for line in lines)
    rows = rows_of(lines)
    assert set(rows) == {
        "scikit-learn logistic regression (L-BFGS) on frozen features",
        "fastai `fine_tune`",
        "tlbench `linear_probe`",
        "tlbench `full`",
        "tlbench `two_stage`",
    }
    # mean ± sample std over the two seeds
    assert rows["scikit-learn logistic regression (L-BFGS) on frozen features"][1] == "91.50 ± 0.71"
    assert rows["fastai `fine_tune`"][1] == "55.00 ± 7.07"
    assert (
        "C = 0.0316, 0.1" in rows["scikit-learn logistic regression (L-BFGS) on frozen features"][3]
    )
    assert "raw (not standardized)" in rows[
        "scikit-learn logistic regression (L-BFGS) on frozen features"][3]  # fmt: skip
    probe = rows["tlbench `linear_probe`"]
    assert probe[1] == "90.00 ± 0.71" and probe[2] == "2"
    assert "(89.50)" in probe[4]  # 91.5 - 2
    assert probe[5].rstrip(" |") == "met"  # 90.0 >= 89.5
    two = rows["tlbench `two_stage`"]
    assert two[5].rstrip(" |") == "met"
    assert "`ts0`, `ts1`" in two[3] and "lr 0.001" in two[3]
    assert rows["tlbench `full`"][5].rstrip(" |") == "–"


def test_targets_missed_are_named(tmp_path):
    # linear_probe 3 points under the probe; two_stage beats fastai but not linear_probe
    write(tmp_path, "a.json", result(lp=(88.5, 88.5), two=(80.0, 80.0), fastai=(70.0, 70.0)))
    rows = rows_of(peer_section(tmp_path))
    assert rows["tlbench `linear_probe`"][5].rstrip(" |") == "missed"
    assert rows["tlbench `two_stage`"][5].rstrip(" |") == (
        "missed (vs fastai: met, vs linear_probe: missed)"
    )


def test_one_table_per_file_and_bad_file_reported(tmp_path):
    write(tmp_path, "a-fashion.json", result(dataset="fashion"))
    write(tmp_path, "b-mnist.json", result(dataset="mnist"))
    (tmp_path / "peer" / "c-broken.json").write_text("{not json")
    lines = peer_section(tmp_path)
    titles = [line for line in lines if line.startswith("### ")]
    assert [t.split(":")[0] for t in titles] == ["### fashion", "### mnist"]
    assert any(line.startswith("`c-broken.json`: unreadable") for line in lines)


def test_leaderboard_includes_the_section(tmp_path):
    write(tmp_path, "a.json", result())
    text = leaderboard.build(tmp_path, tmp_path / "BENCHMARKS.md")
    assert "## Peer validation" in text
    assert "tlbench `two_stage`" in text


def test_longer_linear_probe_records_explain_a_probe_miss(tmp_path):
    """Recorded linear_probe cells equal to the peer cell but for a longer budget get their
    own row, checked against the same target; other cells are ignored."""
    from tlbench.store.records import append_record

    (tmp_path / "peer").mkdir()
    (tmp_path / "peer" / "a.json").write_text(json.dumps(result(lp=(84.0, 85.0))))
    run = tmp_path / "cpu-e10"
    run.mkdir()
    base = {"status": "ok", "strategy": "linear_probe", "dataset": "mnist", "resolution": 64}
    base.update(backbone="efficientnet_lite0", weights="imagenet", config_hash="x")
    base.update(device="cpu", epoch_budget=10, epochs_to_threshold=None, trainable_params=1)
    config = {"train_size": 2000, "lr": "auto", "epochs": 10, "batch_size": 64}
    config["evals_per_epoch"] = 4
    for seed, acc in ((0, 91.0), (1, 90.6), (7, 10.0)):  # seed 7 is not a peer seed
        append_record(run, {**base, "seed": seed, "final_accuracy": acc, "config": config})
    other = {**base, "seed": 0, "final_accuracy": 1.0, "dataset": "fashion", "config": config}
    append_record(run, other)
    text = "\n".join(peer_section(tmp_path))
    assert "| tlbench `linear_probe`, 10 epochs | 90.80 ± 0.28 | 2 |" in text
    row = next(line for line in text.splitlines() if "10 epochs" in line)
    assert row.endswith("| met |")
    missed = next(
        line for line in text.splitlines() if line.startswith("| tlbench `linear_probe` |")
    )
    assert missed.endswith("| missed |")
