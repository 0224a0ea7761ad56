"""Check a plugin's items against tlbench's contract from the plugin's own test suite.

```python
from tlbench.testing import assert_plugin_ok
import my_plugin

def test_my_plugin_keeps_the_contract(tmp_path):
    assert_plugin_ok(my_plugin)               # a module or object with hookimpls
    assert_plugin_ok("my-dist:datasets")      # or an installed plugin, by name
```

Every item the plugin registers is checked as a run would check it before training
(tlbench.run.contract): each dataset is loaded (``data_dir``) and its tensors checked; each
backbone is built with random weights and probed with one image at its input size;
each strategy's plan is made for several stage counts.  ``tlbench check-plugin NAME``
runs the same checks from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from tlbench.api.errors import DataUnavailable, PluginError, TlbenchError
from tlbench.run.contract import (
    Item,
    backbone_violations,
    dataset_violations,
    plan_violations,
)

STAGE_COUNTS = (1, 3, 5, 8)  # plans are made for backbones of these stage counts


@dataclass
class Report:
    """What checking a plugin found: violations (contract broken) and notes (skipped)."""

    plugins: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # "dataset 'x'", ...
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_plugin(
    plugin: object,
    data_dir: Optional[str] = None,
    stage_counts: Sequence[int] = STAGE_COUNTS,
    epochs: int = 2,
) -> Report:
    """Check every item ``plugin`` registers.  ``plugin`` is a module or object with
    hook implementations, or the name of a loaded plugin (``dist:entry_point``) or of a
    distribution (all its plugins)."""
    from tlbench.plugins import registry as plugin_registry
    pm = plugin_registry.get_plugin_manager()
    if isinstance(plugin, str):
        names = _matching(pm, plugin)
    else:
        name = pm.get_name(plugin) if pm.is_registered(plugin) else None
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if not pm.is_registered(plugin):
            pm.register(plugin, name=name)
        names = [name]
    registry = plugin_registry.collect(pm)
    report = Report(plugins=names)
    for kind, entries in registry.items.items():
        for item_name, entry in entries.items():
            if entry.plugin in names:
                _check_item(report, kind, item_name, entry, data_dir, stage_counts, epochs)
    return report


def assert_plugin_ok(plugin: object, **options) -> Report:
    """:func:`check_plugin`, raising AssertionError with one line per violation."""
    report = check_plugin(plugin, **options)
    if report.violations:
        raise AssertionError("\n".join(["plugin contract violations:", *report.violations]))
    if not report.checked:
        raise AssertionError(f"plugin {report.plugins} registered no items")
    return report


def _matching(pm, text: str) -> list[str]:
    names = [name for name, _ in pm.list_name_plugin() if name]
    found = [n for n in names if n == text or n.split(":", 1)[0] == text]
    if not found:
        raise TlbenchError(
            f"no loaded plugin named {text!r}; loaded: {', '.join(sorted(names)) or 'none'} "
            "(see tlbench plugins)."
        )
    return found


def _check_item(report, kind, name, entry, data_dir, stage_counts, epochs) -> None:
    from tlbench.plugins.registry import SINGULAR

    item = Item(SINGULAR[kind], name, entry.plugin)
    report.checked.append(f"{item.kind} {name!r}")
    check = {"datasets": _dataset, "backbones": _backbone, "strategies": _strategy}[kind]
    check(report, item, entry.spec, data_dir=data_dir, stage_counts=stage_counts, epochs=epochs)


def _dataset(report: Report, item: Item, spec, data_dir, **_) -> None:
    try:
        loaded = spec.load(data_dir)
    except DataUnavailable as exc:
        report.notes.append(f"{item.kind} {item.name!r}: not checked, no data here: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
        report.violations.append(
            item.says(f"load() raised {type(exc).__name__}: {exc}", "a LoadedDataset")
        )
        return
    report.violations += dataset_violations(item, spec, loaded)


def _backbone(report: Report, item: Item, spec, **_) -> None:
    import torch

    from tlbench.backbones.weights import WeightsChoice
    from tlbench.run.workspace import check_backbone

    torch.manual_seed(0)
    try:
        model = spec.build(WeightsChoice("random"))
        check_backbone(model, item.name, item.plugin, spec.input_size)
    except PluginError as exc:
        report.violations.append(str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
        report.violations.append(
            item.says(f"build(random weights) raised {type(exc).__name__}: {exc}", "a StagedModel")
        )
        return
    report.violations += backbone_violations(item, model, "random")


def _strategy(report: Report, item: Item, spec, stage_counts, epochs, **_) -> None:
    for count in stage_counts:
        try:
            report.violations += plan_violations(item, spec, None, count, epochs)
        except TlbenchError as exc:  # its default argument does not fit this many stages
            report.notes.append(f"{item.kind} {item.name!r} with {count} stages: {exc}")
