"""Every cell of a ``tlbench run`` becomes an MLflow run, nested under one run per
``tlbench run`` invocation.

Hooks used (tlbench.api.hookspecs), all of which run in the process that stores records
(also under ``--executor ray``), so this plugin is the MLflow store's only writer:

- ``run_started``: the parent run (name: the run directory, e.g. ``cpu-2core-64px-...``);
- ``cell_finished``: a child run per cell with the cell's config as params, the
  learning curve as the metric history ``val_accuracy`` (step = evaluation number; the
  fractional epoch of each point as ``val_epoch``), the final metrics, tags for
  backbone/strategy/dataset/seed/status/config_hash/row_hash, and ``record.json``;
- ``run_finished``: the leaderboard (``BENCHMARKS.md``) and the run's plots on the
  parent run, each cell's own curve plot on its run; the parent's status.

Where: ``MLFLOW_TRACKING_URI`` as MLflow resolves it (a server, ``sqlite:///mlflow.db``
with the full ``mlflow`` package, or ``file:`` with ``MLFLOW_ALLOW_FILE_STORE=true``);
experiment ``TLBENCH_MLFLOW_EXPERIMENT`` (default ``tlbench``).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Optional

from tlbench.api.hookspecs import hookimpl

EXPERIMENT_ENV = "TLBENCH_MLFLOW_EXPERIMENT"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI shows cells under it
METRICS = (  # record keys logged as final metrics (when numeric)
    "final_accuracy",
    "best_val_accuracy",
    "best_val_test_accuracy",
    "epochs_to_threshold",
    "seconds_to_threshold",
    "trainable_params",
    "total_params",
    "train_throughput",
    "train_step_throughput",
    "infer_throughput",
    "train_seconds",
    "wall_seconds",
    "tuning_seconds",
    "lr_chosen",
    "ece",
    "confidence_correct",
    "confidence_wrong",
)
PARAM_LIMIT = 6000  # characters MLflow keeps per param value


class MlflowTracker:
    """One parent run per tlbench run, one child run per cell.  An instance is a plugin
    too (``pm.register(MlflowTracker())``): the tests register one directly."""

    def __init__(self) -> None:
        self._client = None
        self.experiment_id: Optional[str] = None
        self.parent_id: Optional[str] = None
        self.cell_runs: dict[str, tuple[str, object]] = {}  # config_hash -> (run id, cell)

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient()
            name = os.environ.get(EXPERIMENT_ENV, "tlbench")
            found = self._client.get_experiment_by_name(name)
            self.experiment_id = (
                found.experiment_id if found else self._client.create_experiment(name)
            )
        return self._client

    @hookimpl
    def run_started(self, directory, cells):
        client = self.client
        run = client.create_run(
            self.experiment_id,
            run_name=Path(directory).name,
            tags={"tlbench.directory": str(directory), "tlbench.kind": "run"},
        )
        self.parent_id, self.cell_runs = run.info.run_id, {}
        client.log_param(self.parent_id, "cells_planned", len(cells))

    @hookimpl
    def cell_finished(self, cell, record):
        if self.parent_id is None:  # a Runner driven without the CLI: group anyway
            self.run_started(directory=Path("."), cells=[])
        from mlflow.entities import Metric, Param

        client = self.client
        run = client.create_run(
            self.experiment_id, run_name=cell.label(), tags=self._tags(cell, record)
        )
        run_id, now = run.info.run_id, int(time.time() * 1000)
        params = [Param(k, _text(v)) for k, v in sorted(cell.config().items())]
        metrics = [
            Metric(key, float(record[key]), now, 0)
            for key in METRICS
            if isinstance(record.get(key), (int, float)) and not isinstance(record[key], bool)
        ]
        for step, (epoch, accuracy) in enumerate(record.get("curve") or [], start=1):
            metrics.append(Metric("val_accuracy", float(accuracy), now, step))
            metrics.append(Metric("val_epoch", float(epoch), now, step))
        for start in range(0, max(len(metrics), len(params)), 100):  # MLflow's batch limit
            client.log_batch(
                run_id, metrics=metrics[start : start + 100], params=params[start : start + 100]
            )
        client.log_text(run_id, json.dumps(record, indent=1, sort_keys=True), "record.json")
        ok = record.get("status") in ("ok", "diverged")
        client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
        self.cell_runs[record["config_hash"]] = (run_id, cell)

    @hookimpl
    def run_finished(self, directory, outcome, benchmarks):
        if self.parent_id is None:
            return
        client, plots = self.client, Path(directory) / "plots"
        if outcome is not None:
            for key, value in (
                ("cells_ran", len(outcome.ran)),
                ("cells_failed", len(outcome.failed)),
                ("cells_already_recorded", len(outcome.already_done)),
                ("cells_skipped", len(outcome.skipped)),
            ):
                client.log_metric(self.parent_id, key, value)
        if benchmarks is not None and Path(benchmarks).is_file():
            client.log_artifact(self.parent_id, str(benchmarks))
        if plots.is_dir():
            client.log_artifacts(self.parent_id, str(plots), "plots")
            for run_id, cell in self.cell_runs.values():
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cell.dataset}-curves-{cell.backbone}")
                curve = plots / f"{name}.png"  # tlbench.report.plots names them so
                if curve.is_file():
                    client.log_artifact(run_id, str(curve), "plots")
        client.set_terminated(self.parent_id, "FINISHED" if outcome is not None else "KILLED")
        self.parent_id = None

    def _tags(self, cell, record) -> dict:
        return {
            PARENT_TAG: self.parent_id,
            "tlbench.kind": "cell",
            "tlbench.backbone": cell.backbone,
            "tlbench.strategy": cell.strategy,
            "tlbench.dataset": cell.dataset,
            "tlbench.seed": str(cell.seed),
            "tlbench.backbones.weights": cell.weights,
            "tlbench.status": str(record.get("status")),
            "tlbench.config_hash": str(record.get("config_hash")),
            "tlbench.row_hash": str(record.get("row_hash")),
            **({"tlbench.error": record["error"][:5000]} if record.get("error") else {}),
        }


def _text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text[:PARAM_LIMIT]


tracker = MlflowTracker()  # the entry point registers this module: its hooks delegate here


@hookimpl
def run_started(directory, cells):
    tracker.run_started(directory=directory, cells=cells)


@hookimpl
def cell_finished(cell, record):
    tracker.cell_finished(cell=cell, record=record)


@hookimpl
def run_finished(directory, outcome, benchmarks):
    tracker.run_finished(directory=directory, outcome=outcome, benchmarks=benchmarks)
