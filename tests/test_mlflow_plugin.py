"""The tlbench-mlflow plugin (plugins/tlbench-mlflow) against a real local MLflow store,
read back with MLflow's own client.

The plugin object is registered directly with tlbench's plugin manager (its source put
on sys.path), not pip-installed: the hooks and the store are what is tested here; the
package's entry point is checked against its pyproject.  The store is MLflow's file
store (``mlflow-skinny`` has no SQLAlchemy for ``sqlite:``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import register_plugin
from helpers.cli import TINY_RUN, output_args, read_records, run_main

PLUGIN = Path(__file__).parents[1] / "plugins" / "tlbench-mlflow"
pytest.importorskip("mlflow", reason="MLflow is not installed: pip install mlflow-skinny")


@pytest.fixture
def store(tiny_plugin, monkeypatch, tmp_path) -> str:
    """A fresh MLflow store under tmp_path and the tracker registered for every run."""

    monkeypatch.syspath_prepend(str(PLUGIN / "src"))
    from tlbench_mlflow.tracker import MlflowTracker

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    register_plugin(monkeypatch, MlflowTracker(), "tlbench-mlflow")
    return uri


def test_every_cell_is_a_run_with_its_curve_metrics_record_and_plots(store, tmp_path):
    from mlflow.tracking import MlflowClient

    args = TINY_RUN + ["--strategies", "linear_probe,full", "--seeds", "2"] + output_args(tmp_path)
    assert run_main(args).code == 0
    records = read_records(tmp_path)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("tlbench")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags["tlbench.kind"] == "run"]
    cells = {
        r.data.tags["tlbench.config_hash"]: r for r in runs if r.data.tags["tlbench.kind"] == "cell"
    }
    assert len(cells) == len(records) == 4  # one run per cell, grouped under the tlbench run

    assert (parent.info.run_name, parent.info.status) == ("t", "FINISHED")
    assert parent.data.metrics["cells_ran"] == 4 and parent.data.params["cells_planned"] == "4"
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "B.md" in top and "plots" in top
    for record in records:
        run = cells[record["config_hash"]]
        run_id = run.info.run_id
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["tlbench.status"] == "ok"
        assert run.data.params["strategy"] == record["strategy"]
        assert run.data.params["seed"] == str(record["seed"])
        assert run.data.params["data"] == record["config"]["data"]
        assert run.data.metrics["final_accuracy"] == record["final_accuracy"]
        assert run.data.metrics["trainable_params"] == record["trainable_params"]
        history = sorted(client.get_metric_history(run_id, "val_accuracy"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [
            (step, accuracy) for step, (_, accuracy) in enumerate(record["curve"], start=1)
        ]
        epochs = sorted(client.get_metric_history(run_id, "val_epoch"), key=lambda m: m.step)
        assert [m.value for m in epochs] == [epoch for epoch, _ in record["curve"]]
        stored = Path(client.download_artifacts(run_id, "record.json", str(tmp_path / run_id)))
        assert json.loads(stored.read_text()) == record
        plots = [a.path for a in client.list_artifacts(run_id, "plots")]
        assert plots == ["plots/synth-curves-tiny.png"]

    again = run_main(args)  # a second tlbench run is a second parent, with no cell runs
    assert again.code == 0
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 + 2
    newest = max((r for r in runs if r.data.tags["tlbench.kind"] == "run"), key=_started)
    assert newest.data.metrics["cells_already_recorded"] == 4


def _started(run) -> int:
    return run.info.start_time


def test_the_package_entry_point_names_the_tracker_module():
    pyproject = (PLUGIN / "pyproject.toml").read_text()
    assert re.search(
        r'\[project\.entry-points\.tlbench\]\nmlflow = "tlbench_mlflow\.tracker"', pyproject
    )
    module = PLUGIN / "src" / "tlbench_mlflow" / "tracker.py"
    for hook in ("run_started", "cell_finished", "run_finished"):
        assert f"@hookimpl\ndef {hook}(" in module.read_text()
