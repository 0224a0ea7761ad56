"""The plugin contract: each common plugin mistake is one line naming the plugin, the
item and what was expected, and the run does not start (exit 2, nothing recorded).

Each mistake below used to run "ok" with wrong numbers or crash inside torch without
naming the plugin (issue 10).
"""

from __future__ import annotations

import pytest
import torch
from helpers.cli import TINY_RUN, output_args, read_records, run_main, skip_pictures
from helpers.plugins import tiny_staged
from torch import nn

import tlbench.plugins.registry as registry
from tlbench.api.dataset import LoadedDataset
from tlbench.api.hookspecs import hookimpl
from tlbench.api.model import StagedModel
from tlbench.api.specs import BackboneSpec, DatasetSpec, Phase, StrategySpec

PLUGIN = "acme:mistakes"


def four_bands(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 12x12 images of 4 classes (class c lights row band c), uint8."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 60, (n, 12, 12), generator=generator, dtype=torch.uint8)
    for c in range(4):
        images[labels == c, 3 * c : 3 * c + 3, :] = 250
    return images, labels


def dataset(name: str, num_classes: int = 4, edit=lambda parts: parts) -> DatasetSpec:
    def load(data_dir=None) -> LoadedDataset:
        parts = edit([*four_bands(600, 0), *four_bands(200, 1)])
        return LoadedDataset(name, "memory", *parts, num_classes=num_classes)

    return DatasetSpec(name, num_classes, load, probe=lambda data_dir: "memory")


def channels_first(parts):
    images = parts[0].unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return [images, *parts[1:]]


def plan_raises(n, arg):
    raise ValueError("k must be below 3")


def docs_backbone(weights) -> StagedModel:
    """Built by hand as the old guide showed: no weights_source."""
    tiny = tiny_staged(weights)
    return StagedModel(list(tiny.stages), 16, tiny.stage_names)


class Mistakes:
    @hookimpl
    def register_datasets(self, register):
        register(dataset("good"))
        register(dataset("float01", edit=lambda p: [p[0] / 255.0, p[1], p[2] / 255.0, p[3]]))
        register(dataset("six", num_classes=6))
        register(dataset("short_labels", edit=lambda p: [p[0], p[1][:150], p[2], p[3]]))
        register(dataset("one_based", edit=lambda p: [p[0], p[1] + 1, p[2], p[3] + 1]))
        register(dataset("nchw", edit=channels_first))

    @hookimpl
    def register_strategies(self, register):
        def strategy(name, plan):
            register(StrategySpec(name, name, plan))

        strategy("stage7", lambda n, arg: [Phase("p", train_stages=[7])])
        strategy("stage_minus9", lambda n, arg: [Phase("p", train_stages=[-9])])
        strategy(
            "one_and_a_half",
            lambda n, arg: [Phase("a", 1.0), Phase("b", 0.5, train_stages=[-1])],
        )
        strategy("raises", plan_raises)

    @hookimpl
    def register_backbones(self, register):
        register(BackboneSpec("handmade", docs_backbone, 16, (0.5,) * 3, (0.5,) * 3))
        register(
            BackboneSpec(
                "from_modules",
                lambda weights: StagedModel.from_modules(
                    {
                        "conv": nn.Conv2d(3, 8, 3),
                        "pool": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                    },
                    8,
                    weights=weights,
                ),
                16,
                (0.5,) * 3,
                (0.5,) * 3,
            )
        )


@pytest.fixture
def mistakes(tiny_plugin, monkeypatch):
    skip_pictures(monkeypatch)
    previous = registry.get_plugin_manager

    def with_mistakes(load_entry_points: bool = True):
        pm = previous(load_entry_points)
        pm.register(Mistakes(), name=PLUGIN)
        return pm

    monkeypatch.setattr(registry, "get_plugin_manager", with_mistakes)


def run(tmp_path, dataset="good", strategy="linear_probe", backbone="tiny", *extra):
    args = TINY_RUN + ["--datasets", dataset, "--strategies", strategy, "--backbones", backbone]
    return run_main(args + list(extra) + output_args(tmp_path))


def violations(result) -> list[str]:
    assert result.code == 2, result.out + result.err
    head, *lines = result.err_lines()
    assert head.startswith("error: ") and "contract violation" in head, head
    return [line.strip() for line in lines]


MISTAKES = {
    "float-images-0..1": (
        ("float01",),
        "dataset 'float01' from plugin 'acme:mistakes': train images are torch.float32 with "
        "values 0..0.98; expected uint8 in 0..255",
    ),
    "num_classes-6-labels-0..3": (
        ("six",),
        "dataset 'six' from plugin 'acme:mistakes': classes 4, 5 of num_classes=6 have no "
        "train image; expected every class 0..num_classes-1 present in train",
    ),
    "600-images-150-labels": (
        ("short_labels",),
        "dataset 'short_labels' from plugin 'acme:mistakes': 600 train images but 150 train "
        "labels; expected one label per image.",
    ),
    "labels-1..4": (
        ("one_based",),
        "dataset 'one_based' from plugin 'acme:mistakes': train labels span 1..4 with "
        "num_classes=4; expected labels in 0..3.",
    ),
    "channels-first": (
        ("nchw",),
        "dataset 'nchw' from plugin 'acme:mistakes': train images have shape "
        "[600, 3, 12, 12] (channels first?); expected [N, H, W] or [N, H, W, C] with C 1 or 3",
    ),
    "stage-7-of-3": (
        ("good", "stage7"),
        "strategy 'stage7' from plugin 'acme:mistakes': phase 'p' trains stage 7 of a "
        "3-stage backbone; expected stage indices in -3..2.",
    ),
    "stage-minus-9": (
        ("good", "stage_minus9"),
        "strategy 'stage_minus9' from plugin 'acme:mistakes': phase 'p' trains stage -9 of a "
        "3-stage backbone; expected stage indices in -3..2.",
    ),
    "fractions-sum-1.5": (
        ("good", "one_and_a_half"),
        "strategy 'one_and_a_half' from plugin 'acme:mistakes': plan(3, None) has epoch "
        "fractions [1.0, 0.5] (sum 1.5); expected positive epoch fractions summing to 1",
    ),
    "plan-raises-ValueError": (
        ("good", "raises"),
        "strategy 'raises' from plugin 'acme:mistakes': plan(3, None) raised ValueError: k "
        "must be below 3; expected a list of Phase",
    ),
    "backbone-without-weights_source": (
        ("good", "linear_probe", "handmade"),
        "backbone 'handmade' from plugin 'acme:mistakes': build() returned a StagedModel "
        "without weights_source (None); expected a string saying what the weights are",
    ),
}


@pytest.mark.parametrize("args, expected", MISTAKES.values(), ids=list(MISTAKES))
def test_each_mistake_is_one_line_and_nothing_runs(mistakes, tmp_path, args, expected):
    (line,) = violations(run(tmp_path, *args))
    assert line.startswith(expected), line
    assert not (tmp_path / "results").exists()


def test_dry_run_calls_plan_and_reports_a_failing_plan(mistakes, tmp_path):
    (line,) = violations(run(tmp_path, "good", "raises", "tiny", "--dry-run"))
    assert "plan(3, None) raised ValueError" in line


def test_all_violations_are_reported_together(mistakes, tmp_path):
    lines = violations(run(tmp_path, "float01,one_based", "stage7,one_and_a_half", "tiny"))
    assert len(lines) == 4, lines
    assert [line.split(":")[0] for line in lines] == [
        "dataset 'float01' from plugin 'acme",
        "dataset 'one_based' from plugin 'acme",
        "strategy 'stage7' from plugin 'acme",
        "strategy 'one_and_a_half' from plugin 'acme",
    ]


def test_a_plugin_that_keeps_the_contract_runs(mistakes, tmp_path):
    result = run(tmp_path, "good", "linear_probe,full", "tiny,from_modules", "--weights", "random")
    assert result.code == 0, result.err
    records = read_records(tmp_path)
    assert {r["status"] for r in records} == {"ok"}
    by_backbone = {r["backbone"]: r for r in records}
    assert by_backbone["from_modules"]["weights_source"] == "random"
    assert by_backbone["tiny"]["final_accuracy"] > 50  # chance is 25
