"""The package's own tests: run them against the installed package.

pip install ./plugins/tlbench-extras && pytest plugins/tlbench-extras/tests
"""

from __future__ import annotations

import pytest
import torch
from tlbench_extras.datasets import DIGITS_SOURCE, load_digits
from tlbench_extras.strategies import head_then_last

from tlbench.api.errors import TlbenchError
from tlbench.plugins.registry import load_registry


def test_installed_entry_points_register_every_item():
    registry = load_registry()  # what `tlbench` itself sees: the real entry points
    assert registry.items["datasets"]["digits"].plugin == "tlbench-extras:datasets"
    assert registry.items["datasets"]["kmnist"].plugin == "tlbench-extras:datasets"
    assert registry.items["strategies"]["head_then_last"].plugin == "tlbench-extras:strategies"


def test_digits_are_uint8_28px_stratified_and_deterministic():
    ds = load_digits()
    assert ds.source == DIGITS_SOURCE
    assert ds.train_images.shape == (1497, 28, 28) and ds.test_images.shape == (300, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert torch.bincount(ds.test_labels).tolist() == [30, 30, 30, 31, 30, 30, 30, 30, 29, 30]
    assert int(ds.train_images.max()) == 255 and float(ds.train_images.float().mean()) > 20
    load_digits.cache_clear()
    assert torch.equal(load_digits().test_images, ds.test_images)


def test_head_then_last_plans_two_phases():
    head, last = head_then_last(9, "2")
    assert head.train_stages == () and head.epoch_fraction == 0.5
    assert list(last.train_stages) == [7, 8] and last.lr_scale == 0.1
    assert list(head_then_last(3, "7")[1].train_stages) == [0, 1, 2]  # k capped
    with pytest.raises(TlbenchError, match="head_then_last:x is invalid"):
        head_then_last(9, "x")
