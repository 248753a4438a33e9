"""The registered backbones' names and input sizes as torch-free data, for checks before compute
(``advrec run --validate``) and work estimates. A test keeps it equal to
:data:`advrec_common.vision.backbones.BACKBONES`."""

from __future__ import annotations

BACKBONE_INPUT_SIZES: dict[str, int] = {
    "resnet50": 224, "resnet18": 224, "vgg16": 224, "alexnet": 224, "efficientnet_lite0": 224,
    "small_cnn": 64, "tiny_cnn": 64,
}
TIMM_PREFIX = "timm:"  # any timm model (optional extra), 224 px


def known_backbone(name: str) -> bool:
    return name in BACKBONE_INPUT_SIZES or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))
