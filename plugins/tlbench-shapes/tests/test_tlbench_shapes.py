"""The package's own tests, against the installed package:
pip install ./plugins/tlbench-shapes && pytest plugins/tlbench-shapes/tests
"""

from __future__ import annotations

import torch
from tlbench_shapes import load_shapes

from tlbench.plugins.registry import load_registry
from tlbench.testing import assert_plugin_ok


def test_installed_entry_point_registers_both_items():
    registry = load_registry()
    assert registry.items["backbones"]["tinycnn"].plugin == "tlbench-shapes:shapes"
    assert registry.items["datasets"]["shapes"].plugin == "tlbench-shapes:shapes"


def test_every_item_keeps_tlbenchs_contract():
    report = assert_plugin_ok("tlbench-shapes")
    assert report.checked == ["backbone 'tinycnn'", "dataset 'shapes'"]


def test_shapes_load_as_uint8_rgb_in_class_order():
    ds = load_shapes()
    assert ds.train_images.shape == (240, 32, 32, 3) and ds.train_images.dtype == torch.uint8
    assert ds.test_labels.bincount().tolist() == [15, 15, 15, 15]
    assert ds.source.startswith("folder:") and " key=" in ds.source
