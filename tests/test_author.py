"""What a plugin author gets: tlbench plugins / check-plugin / --version, the
tlbench.testing helper, TLBENCH_DISABLE_PLUGINS, built-ins that always load, per-backbone
--weights and the ``pretrained`` weights kind."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from helpers.cli import TINY_RUN, output_args, read_records, run_main, skip_pictures
from helpers.plugins import TinyPlugin, tiny_staged

import tlbench.plugins.registry as registry
from tlbench import __version__
from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import BackboneSpec
from tlbench.backbones.weights import parse_weights_option
from tlbench.testing import assert_plugin_ok, check_plugin


def fake_distribution(site: Path, dist: str, ep_name: str, module: str, source: str) -> None:
    """An installed distribution whose ``tlbench`` entry point is ``module``."""
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[tlbench]\n{ep_name} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


DUPLICATE_MNIST = """
    from tlbench.api.hookspecs import hookimpl
    from tlbench.api.specs import DatasetSpec

    @hookimpl
    def register_datasets(register):
        register(DatasetSpec("mnist", 10, load=print, probe=print))
"""


@pytest.fixture
def third_party(tmp_path, monkeypatch) -> Path:
    """Two installed third-party plugins: one duplicates ``mnist``, one fails to import."""
    site = tmp_path / "site"
    fake_distribution(site, "acme-dupe", "data", "acme_dupe", DUPLICATE_MNIST)
    fake_distribution(site, "acme-broken", "nets", "acme_broken", "import torchaudio_nope\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TLBENCH_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS", raising=False)
    return site


def test_version():
    result = run_main(["--version"])
    assert result.code == 0 and result.out.strip() == f"tlbench {__version__}"


def rows(text: str) -> dict[str, str]:
    return {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}


def test_plugins_lists_distribution_version_entry_point_items_and_status(third_party):
    result = run_main(["plugins"])
    assert result.code == 0, result.err
    table = rows(result.out)
    assert re.search(rf"│ tlbench\s+│ {__version__}\s+│", table["tlbench:datasets"])
    assert "datasets = tlbench.builtin.datasets" in table["tlbench:datasets"]
    assert "dataset mnist, dataset fashion" in table["tlbench:datasets"]
    assert "acme-dupe" in table["acme-dupe:data"] and "0.3" in table["acme-dupe:data"]
    assert "data = acme_dupe" in table["acme-dupe:data"]
    assert "failed: ModuleNotFoundError" in table["acme-broken:nets"]


def test_a_duplicate_blocks_only_its_kind_and_can_be_disabled(third_party, monkeypatch):
    dup = run_main(["list", "datasets"])
    assert dup.code == 2 and "TLBENCH_DISABLE_PLUGINS=acme-dupe:data" in dup.err
    assert run_main(["list", "strategies"]).code == 0  # other kinds are not blocked

    monkeypatch.setenv("TLBENCH_DISABLE_PLUGINS", "acme-dupe")
    fixed = run_main(["list", "datasets"])
    assert fixed.code == 0 and "tlbench:datasets" in fixed.out
    assert "disabled" in rows(run_main(["plugins"]).out)["acme-dupe:data"]


def test_builtins_load_without_entry_points_unless_disabled(monkeypatch):
    monkeypatch.setenv("TLBENCH_LOAD_PLUGINS", "0")
    items = registry.load_registry().items
    assert "efficientnet_lite0" in items["backbones"] and "mnist" in items["datasets"]
    monkeypatch.setenv("TLBENCH_DISABLE_PLUGINS", "tlbench:backbones")
    items = registry.load_registry().items
    assert not items["backbones"] and "linear_probe" in items["strategies"]


class LabelsItsOwnAsImagenet:
    @hookimpl
    def register_backbones(self, register):
        def build(weights):
            model = tiny_staged(weights)
            if weights.kind == "pretrained":
                model.weights_source = "timm:own-checkpoint"  # the mistake
            return model

        register(BackboneSpec("liar", build, 16, (0.5,) * 3, (0.5,) * 3))


def test_testing_helper_passes_a_good_plugin_and_lists_a_bad_ones_violations(synth_dir):
    report = assert_plugin_ok(TinyPlugin(synth_dir))
    assert report.checked == ["backbone 'tiny'", "dataset 'synth'"]

    from test_contract import Mistakes

    with pytest.raises(AssertionError) as failure:
        assert_plugin_ok(Mistakes())
    lines = str(failure.value).splitlines()[1:]
    assert any(line.startswith("dataset 'float01' from plugin 'Mistakes'") for line in lines)
    assert any("strategy 'stage7'" in line for line in lines)
    assert any("backbone 'handmade'" in line and "weights_source" in line for line in lines)
    assert not any("'good'" in line or "'from_modules'" in line for line in lines)
    assert check_plugin(LabelsItsOwnAsImagenet()).violations == []  # random: says random


def test_check_plugin_command(tiny_plugin):
    result = run_main(["check-plugin", "tests:tiny"])
    assert result.code == 0, result.err
    assert "tests:tiny: 2 items keep the contract" in result.out
    missing = run_main(["check-plugin", "nope"])
    assert missing.code == 2 and "no loaded plugin named 'nope'" in missing.err


def test_parse_weights_option(tmp_path):
    checkpoint = tmp_path / "w=1.pt"
    checkpoint.write_bytes(b"")
    assert parse_weights_option("imagenet") == {"": "imagenet"}
    assert parse_weights_option("random,tiny=pretrained") == {"": "random", "tiny": "pretrained"}
    assert parse_weights_option(f"tiny={checkpoint}") == {
        "": "imagenet",
        "tiny": f"file:{checkpoint}",
    }
    assert parse_weights_option(str(checkpoint)) == {"": f"file:{checkpoint}"}


def test_per_backbone_weights_and_the_pretrained_kind(tiny_plugin, monkeypatch, tmp_path):
    skip_pictures(monkeypatch)
    previous = registry.get_plugin_manager

    def with_liar(load_entry_points: bool = True):
        pm = previous(load_entry_points)
        pm.register(LabelsItsOwnAsImagenet(), name="acme:liar")
        return pm

    monkeypatch.setattr(registry, "get_plugin_manager", with_liar)
    args = TINY_RUN + ["--strategies", "linear_probe", "--backbones", "tiny,liar"]
    result = run_main(args + ["--weights", "tiny=pretrained,random"] + output_args(tmp_path))
    assert result.code == 0, result.err
    records = {r["backbone"]: r for r in read_records(tmp_path)}
    assert records["tiny"]["weights"] == "pretrained"
    assert records["tiny"]["weights_source"] == "pretrained"  # never "imagenet"
    assert records["tiny"]["config"]["weights_id"] == "pretrained"
    assert records["liar"]["weights"] == "random"

    lied = run_main(
        args + ["--weights", "liar=pretrained", "--run-name", "u"] + output_args(tmp_path)
    )
    assert lied.code == 2
    assert (
        "backbone 'liar' from plugin 'acme:liar': built for weights 'pretrained' but says "
        "weights_source='timm:own-checkpoint'" in lied.err
    )
    unknown = run_main(args + ["--weights", "tyni=random"] + output_args(tmp_path))
    assert unknown.code == 2 and "unknown backbone 'tyni'" in unknown.err
