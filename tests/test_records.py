"""The committed results hold the current schema: no row predates the code rendering it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlbench.store.records import RECORDS_FILE, REQUIRED_CONFIG_KEYS, REQUIRED_KEYS, SCHEMA_VERSION

RESULTS = Path(__file__).resolve().parent.parent / "results"
# the performance issue's before/after main-job timings (run.json names each commit),
# kept as measured by that code, on purpose
HISTORICAL = (RESULTS / "mainjob" / "before", RESULTS / "mainjob" / "after")
COMMITTED = sorted(
    path
    for path in RESULTS.rglob(RECORDS_FILE)
    if not any(path.is_relative_to(old) for old in HISTORICAL)
)


def missing_keys(record: dict) -> list[str]:
    missing = [key for key in REQUIRED_KEYS if key not in record]
    config = record.get("config") or {}
    missing += [f"config.{key}" for key in REQUIRED_CONFIG_KEYS if key not in config]
    if config.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        missing.append(f"config.schema == {SCHEMA_VERSION} (is {config['schema']})")
    return missing


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_records_have_every_required_key(path):
    stale = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        record = json.loads(line)
        if record.get("status") == "ok" and (missing := missing_keys(record)):
            stale.append(f"line {number} ({record.get('strategy')}): {', '.join(missing)}")
    assert not stale, (
        f"{path} holds records older than the schema (regenerate them with the current "
        "code): " + "; ".join(stale[:5]) + (f"; {len(stale) - 5} more" if len(stale) > 5 else "")
    )


def test_the_check_catches_a_missing_key():
    record = {key: None for key in REQUIRED_KEYS}
    record["config"] = {key: 1 for key in REQUIRED_CONFIG_KEYS} | {"schema": SCHEMA_VERSION}
    assert missing_keys(record) == []
    del record["test_correct"]
    record["config"].pop("data")
    assert missing_keys(record) == ["test_correct", "config.data"]
