"""cifar10, cifar100, svhn and stl10 from --data-dir: small synthetic files in each
dataset's real on-disk format, parsed by torchvision's own reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import TINY_RUN, output_args, read_records, run_main, skip_pictures

import tlbench.data.torchvision_sets as tv
from tlbench.api.errors import DataUnavailable

N_TRAIN, N_TEST = 40, 20


def pixels(n: int, side: int, labels: np.ndarray) -> np.ndarray:
    """NHWC uint8 images whose mean brightness encodes the label (to check the order)."""
    rng = np.random.default_rng(len(labels))
    images = rng.integers(0, 20, size=(n, side, side, 3), dtype=np.uint8)
    images[:, : side // 2] += (labels * 20).astype(np.uint8)[:, None, None, None]
    return images


def write_cifar(root: Path, classes: int) -> dict:
    folder, label_key = (
        ("cifar-10-batches-py", "labels") if classes == 10 else ("cifar-100-python", "fine_labels")
    )
    d = root / folder
    d.mkdir(parents=True)
    expected = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] if classes == 10 else ["train"]
    splits = [(name, "train", N_TRAIN // len(names)) for name in names]
    splits.append(("test_batch" if classes == 10 else "test", "test", N_TEST))
    start = 0
    for name, split, n in splits:
        labels = np.arange(start, start + n) % min(classes, 10)  # every class across batches
        start = 0 if split == "train" and name == splits[-2][0] else start + n
        images = pixels(n, 32, labels)
        flat = images.transpose(0, 3, 1, 2).reshape(n, -1)  # CIFAR stores CHW rows
        with open(d / name, "wb") as handle:
            pickle.dump({"data": flat, label_key: labels.tolist()}, handle)
        expected.setdefault(split, []).append((images, labels))
    meta, key = ("batches.meta", "label_names") if classes == 10 else ("meta", "fine_label_names")
    with open(d / meta, "wb") as handle:
        pickle.dump({key: [f"c{i}" for i in range(classes)]}, handle)
    return {
        s: [np.concatenate(x) for x in zip(*parts, strict=True)] for s, parts in expected.items()
    }


def write_svhn(root: Path) -> dict:
    from scipy.io import savemat

    root.mkdir(parents=True)
    expected = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = np.arange(n) % 10
        images = pixels(n, 32, labels)
        stored = np.where(labels == 0, 10, labels)  # SVHN's "10" is the digit 0
        savemat(
            root / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": stored[:, None]}
        )
        expected[split] = [images, labels]
    return expected


def write_stl10(root: Path) -> dict:
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    expected = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = np.arange(n) % 10
        images = pixels(n, 96, labels)
        # STL-10 stores each image channel by channel, column-major
        images.transpose(0, 3, 2, 1).tofile(d / f"{split}_X.bin")
        (labels + 1).astype(np.uint8).tofile(d / f"{split}_y.bin")  # 1-based on disk
        expected[split] = [images, labels]
    (d / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    return expected


WRITERS = {
    "cifar10": lambda root: write_cifar(root, 10),
    "cifar100": lambda root: write_cifar(root, 100),
    "svhn": write_svhn,
    "stl10": write_stl10,
}


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TLBENCH_OFFLINE", "1")
    tv.load.cache_clear()


@pytest.mark.parametrize("name", list(WRITERS))
def test_synthetic_files_read_by_torchvisions_reader(name, tmp_path):
    expected = WRITERS[name](tmp_path / "data" / name)
    spec = tv.SETS[name]
    ds = tv.load(spec, str(tmp_path / "data"))
    assert ds.source == f"dir:{(tmp_path / 'data' / name).resolve()}"
    for split in ("train", "test"):
        images, labels = expected[split]
        assert getattr(ds, f"{split}_images").numpy().tolist() == images.tolist()
        assert getattr(ds, f"{split}_labels").tolist() == labels.tolist()
    assert ds.num_classes == spec.num_classes
    assert ds.train_images.dtype.is_floating_point is False and ds.train_images.shape[-1] == 3


def test_offline_without_files_says_every_source_and_the_fix(tmp_path):
    with pytest.raises(DataUnavailable) as failure:
        tv.probe(tv.SETS["cifar10"], str(tmp_path))
    message = str(failure.value)
    assert "no usable source for dataset 'cifar10'" in message
    assert "TLBENCH_OFFLINE=1" in message and "cifar-10-batches-py/data_batch_1" in message


def test_tlbench_run_cifar10_from_data_dir(tiny_plugin, tmp_path, monkeypatch):
    skip_pictures(monkeypatch)
    write_cifar(tmp_path / "data" / "cifar10", 10)
    args = TINY_RUN + ["--datasets", "cifar10", "--strategies", "linear_probe"]
    args += ["--train-size", "20", "--val-size", "20", "--test-size", "20"]
    args += ["--data-dir", str(tmp_path / "data")]
    result = run_main(args + output_args(tmp_path))
    assert result.code == 0, result.err
    (record,) = read_records(tmp_path)
    assert record["status"] == "ok"
    assert record["data_source"] == f"dir:{(tmp_path / 'data' / 'cifar10').resolve()}"
    assert record["config"]["data"].startswith("sha256:")
    assert record["config"]["plugins"]["dataset"].startswith("tlbench ")
