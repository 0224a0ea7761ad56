"""The record schema as a pydantic model: what every line of ``records.jsonl`` must be.

``records.Record`` documents every key; this model enforces, with pydantic's strict
types, what the code that reads records relies on: the identity and status of every
record, the settings the leaderboard header prints, the metrics it aggregates for
``ok`` records, and the type of every other known key when present.  Unknown keys are
allowed (plugins and newer versions may add some).  No number anywhere may be NaN or
infinite and no string may hold a lone surrogate: such a record could be stored but not
rendered.  ``check`` returns the first problem as ``field: message``, or None.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Finite = Annotated[float, Field(allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
Name = Annotated[str, Field(min_length=1, max_length=500)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class Config(_Strict):
    """The settings every record's ``config`` holds (the leaderboard header shows them)."""

    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    lr: Union[Literal["auto"], Annotated[float, Field(gt=0, allow_inf_nan=False)]]
    evals_per_epoch: Annotated[int, Field(ge=1)]


class SplitSizes(_Strict):
    train: Count
    val: Count
    test: Count


class PerClass(_Strict):
    precision: list[Finite] = []
    recall: list[Finite] = []
    f1: list[Finite] = []
    support: list[Count] = []


class RecordModel(_Strict):
    """One line of records.jsonl (see ``tlbench.store.records.Record`` for each key's meaning)."""

    backbone: Name
    strategy: Name
    dataset: Name
    seed: Seed
    weights: Name
    status: Literal["ok", "diverged", "failed"]
    config_hash: Name
    config: Config
    device: str
    resolution: Annotated[int, Field(ge=1)]
    row_hash: Optional[str] = None
    threshold: Optional[Percent] = None
    split_sizes: Optional[SplitSizes] = None
    class_names: Optional[list[str]] = None
    # metrics: required for ok records (the validator below), typed whenever present
    final_accuracy: Optional[Percent] = None
    epoch_budget: Optional[Annotated[int, Field(ge=1)]] = None
    epochs_to_threshold: Optional[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = None
    seconds_to_threshold: Optional[Seconds] = None
    best_val_accuracy: Optional[Percent] = None
    best_val_test_accuracy: Optional[Percent] = None
    trainable_params: Optional[Count] = None
    total_params: Optional[Count] = None
    trainable_params_per_phase: Optional[dict[str, Count]] = None
    train_throughput: Optional[Finite] = None
    train_step_throughput: Optional[Finite] = None
    infer_throughput: Optional[Finite] = None
    train_seconds: Optional[Seconds] = None
    wall_seconds: Optional[Seconds] = None
    tuning_seconds: Optional[Seconds] = None
    lr_chosen: Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = None
    lr_search: Optional[dict[str, Any]] = None
    curve: Optional[list[Annotated[list[Finite], Field(min_length=2, max_length=2)]]] = None
    per_class: Optional[PerClass] = None
    confusion: Optional[list[list[Count]]] = None
    test_correct: Optional[str] = None
    ece: Optional[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = None
    confidence_correct: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    confidence_wrong: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    bn_policy: Optional[str] = None
    freeze_verified: Optional[bool] = None
    error: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _json_safe(cls, data: Any) -> Any:
        """No NaN/inf and no lone surrogate anywhere, unknown keys and nested dicts too."""
        problem = _unsafe_value(data, ())
        if problem is not None:
            raise ValueError(problem)
        return data

    @model_validator(mode="after")
    def _ok_has_metrics(self) -> RecordModel:
        if self.status == "ok":
            missing = [
                key
                for key in ("final_accuracy", "epoch_budget", "trainable_params")
                if getattr(self, key) is None
            ]
            if "epochs_to_threshold" not in self.model_fields_set:
                missing.append("epochs_to_threshold")
            if missing:
                raise ValueError(f"an ok record lacks {', '.join(missing)}")
        return self


def _unsafe_value(value: Any, where: tuple) -> Optional[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return f"field {_dotted(where)} is {value} (not a finite number)"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"field {_dotted(where)} holds a lone surrogate (not valid Unicode)"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str):
            found = _unsafe_value(key, where)
            if found:
                return found
        found = _unsafe_value(item, (*where, key))
        if found:
            return found
    return None


def _dotted(where: tuple) -> str:
    return ".".join(str(part) for part in where) or "the record"


def check(record: Any) -> Optional[str]:
    """None if ``record`` is a valid record, else its first problem: ``field: message``."""
    try:
        RecordModel.model_validate(record)
    except ValidationError as exc:
        return _first_error(exc)
    return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"]) or "record"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"field {field} is missing"
    value = error.get("input")
    shown = "" if isinstance(value, (dict, list)) or field == "record" else f" (got {value!r:.60})"
    return f"field {field}: {message}{shown}" if field != "record" else message
