"""The built-in image-folder dataset (``--datasets folder:NAME=PATH``) on generated
folders of PNG/JPEG/BMP/WEBP files in mixed modes and sizes (tests/helpers/folders.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import TINY_RUN, output_args, read_records, run_main, skip_pictures
from helpers.folders import SHAPES, write_folder
from PIL import Image

import tlbench.data.folder as folder
from tlbench.api.errors import TlbenchError
from tlbench.data.folder import FolderRequest, load_folder
from tlbench.data.splits import make_splits


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """400 train + 100 test files, 4 classes, 10 mode/format variants, 24..72 px."""
    return write_folder(tmp_path_factory.mktemp("shapes"), {"train": 100, "test": 25})


def load(root: Path, side: int = 32, skip_bad: bool = False):
    return load_folder(FolderRequest.parse(f"folder:shapes@{side}={root}", skip_bad))


def test_mixed_modes_and_sizes_load_as_uint8_in_class_order(shapes):
    ds = load(shapes)
    assert ds.train_images.shape == (400, 32, 32, 3) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (100, 32, 32, 3)
    assert ds.train_labels.bincount().tolist() == [100] * 4
    assert ds.test_labels.bincount().tolist() == [25] * 4
    assert ds.num_classes == 4
    assert folder.scan(shapes, "shapes").classes == SHAPES  # folder names, sorted
    key = folder.scan(shapes, "shapes").key(32)
    assert ds.source == f"folder:{shapes} key={key} (train/test, 32px)"
    # every image has its bright shape in the middle over a dark noisy border
    middle = ds.train_images[:, 12:20, 12:20].float().mean(dim=(1, 2, 3))
    border = ds.train_images[:, :3, :3].float().mean(dim=(1, 2, 3))
    assert (middle > border + 40).float().mean() > 0.95


def gradient(width=40, height=30) -> np.ndarray:
    return (np.arange(width * height).reshape(height, width) * 211 % 256).astype(np.uint8)


def test_sixteen_bit_and_palette_images_decode_like_their_eight_bit_originals(tmp_path):
    gray = gradient()
    Image.fromarray(gray).save(tmp_path / "eight.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    eight = folder.decode(tmp_path / "eight.png", 24)
    sixteen = folder.decode(tmp_path / "sixteen.png", 24)
    assert eight.shape == (24, 24) and np.abs(eight.astype(int) - sixteen).max() <= 1

    rgb = Image.fromarray(np.stack([gray, 255 - gray, gray // 2], axis=-1))
    rgb.quantize(256).save(tmp_path / "palette.png")  # exact: < 256 colors
    Image.open(tmp_path / "palette.png").convert("RGB").save(tmp_path / "rgb.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    palette = folder.decode(tmp_path / "palette.png", 24)
    assert palette.shape == (24, 24, 3)
    assert np.array_equal(palette, folder.decode(tmp_path / "rgb.png", 24))


def test_a_grayscale_only_folder_keeps_one_channel(tmp_path):
    root = write_folder(tmp_path / "gray", {"train": 3, "test": 2}, variants=(("L", ".png"),))
    assert load(root, side=16).train_images.shape == (12, 16, 16)


def test_second_load_reads_the_cache_and_a_touched_file_decodes_again(shapes, monkeypatch):
    first = load(shapes)
    decoded: list[Path] = []
    real_decode = folder.decode

    def counting(path, side):
        decoded.append(path)
        return real_decode(path, side)

    monkeypatch.setattr(folder, "decode", counting)
    second = load(shapes)
    assert decoded == [] and second.fingerprint() == first.fingerprint()
    assert second.source == first.source

    victim = next((shapes / "train" / "circle").iterdir())
    stat = victim.stat()
    try:
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        third = load(shapes)
        assert len(decoded) == 500  # the key changed: everything decodes once more
        assert third.source != first.source and third.fingerprint() == first.fingerprint()
    finally:
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_an_unreadable_file_is_an_error_naming_it_or_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path / "bad", {"train": 5, "test": 2})
    broken = root / "train" / "square" / "0002.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(TlbenchError, match=f"cannot read image {broken}: .*--skip-bad-images"):
        load(root, side=16)
    with pytest.warns(folder.UnreadableImages, match="skipped 1 unreadable files"):
        ds = load(root, side=16, skip_bad=True)
    assert len(ds.train_labels) == 19 and ds.source.endswith(", 1 unreadable skipped)")


def test_one_tree_is_split_by_the_fixed_seed_stratified(tmp_path):
    root = write_folder(tmp_path / "tree", {"": 20})
    ds = load(root, side=16)
    assert ds.test_labels.bincount().tolist() == [4] * 4  # 20% of each class
    assert ds.train_labels.bincount().tolist() == [16] * 4
    assert "one tree split 0.2 test with seed 0" in ds.source
    (Path(os.environ["TLBENCH_CACHE"]) / "folders").rename(tmp_path / "old-cache")
    again = load(root, side=16)  # decoded afresh: the same split
    assert again.fingerprint() == ds.fingerprint()


def test_a_val_folder_is_the_validation_split(tmp_path):
    root = write_folder(tmp_path / "withval", {"train": 10, "val": 3, "test": 2})
    ds = load(root, side=16)
    assert ds.val_labels.bincount().tolist() == [3] * 4
    splits = make_splits(ds, None, 500, None)  # --val-size caps the val/ folder
    assert splits.sizes() == {"train": 40, "val": 12, "test": 8}
    assert torch.equal(splits.val_images, ds.val_images)


@pytest.mark.parametrize(
    "text", ["folder:shapes", "folder:=/x", "folder:shapes@big=/x", "folder:s@4=/x"]
)
def test_a_malformed_folder_item_is_one_clear_error(text):
    with pytest.raises(TlbenchError, match="--datasets"):
        FolderRequest.parse(text)


def test_tlbench_run_on_a_folder_records_the_cache_key(shapes, tiny_plugin, tmp_path, monkeypatch):
    skip_pictures(monkeypatch)
    args = TINY_RUN + ["--datasets", f"folder:shapes@16={shapes}", "--strategies", "full"]
    args += ["--epochs", "10"]
    result = run_main(args + output_args(tmp_path))
    assert result.code == 0, result.err
    (record,) = read_records(tmp_path)
    key = folder.scan(shapes, "shapes").key(16)
    assert record["status"] == "ok" and record["dataset"] == "shapes"
    assert record["data_source"] == f"folder:{shapes} key={key} (train/test, 16px)"
    assert record["config"]["plugins"]["dataset"].startswith("tlbench ")
    assert record["final_accuracy"] > 40  # 4 shapes: chance is 25

    again = run_main(args + output_args(tmp_path))
    assert again.code == 0 and "1 already recorded" in again.out
