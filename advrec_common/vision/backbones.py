"""The one backbone registry: architectures described as data, built into :class:`ImageModel`.

A :class:`Backbone` says how to build the bare network (``net``; what external checkpoints
load into, with its classifier weight at ``head_key``), how to split a network into
``(body, pool, head, feature_dim)``, and the input size it expects. Adding a backbone is one
function plus one registry line; ``timm:<name>`` builds any timm model (optional extra).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from advrec_common.errors import InvalidInput, NotFound
from advrec_common.vision.model import IMAGENET_MEAN, IMAGENET_STD, GlobalAvgPool, ImageModel

Parts = tuple[nn.Module, nn.Module, nn.Module, int]


@dataclass(frozen=True)
class Backbone:
    """``net(num_classes)`` builds the bare network; ``split(net)`` cuts it into (body, pool, head,
    feature_dim), sharing its modules so the net's state-dict keys stay the checkpoint's keys."""

    net: Callable[[int], nn.Module]
    split: Callable[[nn.Module], Parts]
    head_key: str | None  # classifier weight in the bare net's state dict (None: no external layouts)
    input_size: int  # the square side the architecture is usually trained at


def _torchvision_net(name: str) -> Callable[[int], nn.Module]:
    def net(num_classes: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return net


def _split_resnet(net: nn.Module) -> Parts:
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return body, GlobalAvgPool(), net.fc, net.fc.in_features


def _split_classifier_net(net: nn.Module) -> Parts:
    """VGG / AlexNet: features -> (avgpool, flatten, classifier[:-1]) -> classifier[-1] (4096-d)."""
    pool = nn.Sequential(net.avgpool, nn.Flatten(1), *list(net.classifier.children())[:-1])
    return net.features, pool, net.classifier[-1], 4096


class SmallCNN(nn.Module):
    """A 4-block CNN for small (e.g. 64x64) images: 4x4 spatial map at 64 px, ``4*width``-d features."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width),
                                  block(4 * width, 4 * width))
        self.head = nn.Linear(4 * width, num_classes)


def _split_small_cnn(net: nn.Module) -> Parts:
    return net.body, GlobalAvgPool(), net.head, net.head.in_features


def _lite0_net(num_classes: int) -> nn.Module:
    from advrec_common.vision.efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0(num_classes=num_classes)


def _split_lite0(net: nn.Module) -> Parts:
    return net.body(), GlobalAvgPool(), net._fc, net._fc.in_features


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(_torchvision_net("resnet50"), _split_resnet, "fc.weight", 224),
    "resnet18": Backbone(_torchvision_net("resnet18"), _split_resnet, "fc.weight", 224),
    "vgg16": Backbone(_torchvision_net("vgg16"), _split_classifier_net, "classifier.6.weight", 224),
    "alexnet": Backbone(_torchvision_net("alexnet"), _split_classifier_net, "classifier.6.weight", 224),
    "efficientnet_lite0": Backbone(_lite0_net, _split_lite0, "_fc.weight", 224),
    "small_cnn": Backbone(lambda n: SmallCNN(n, width=32), _split_small_cnn, None, 64),
    # small_cnn at half width (64-d features, 4x4 map at 64 px, ~4x cheaper): the demo extractors' backbone
    "tiny_cnn": Backbone(lambda n: SmallCNN(n, width=16), _split_small_cnn, None, 64),
}


def backbone(name: str) -> Backbone:
    """The registry entry of ``name`` (NotFound lists the known ones)."""
    if name not in BACKBONES:
        raise NotFound(f"unknown backbone {name!r}; known: {sorted(BACKBONES)} or 'timm:<name>'")
    return BACKBONES[name]


def build_model(
    name: str,
    class_names: Sequence[str],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    net: nn.Module | None = None,
    input_size: int | None = None,
) -> ImageModel:
    """An :class:`ImageModel` of a registered backbone (or ``timm:<name>``).

    Randomly initialised unless ``net`` (the bare network of that backbone, e.g. with a checkpoint
    loaded) is given, whose modules are then reused. ``input_size`` defaults to the backbone's.
    """
    if not class_names:
        raise InvalidInput("a model needs at least one class")
    if name.startswith("timm:"):
        from advrec_common.vision.timm_backbones import build_timm

        body, pool, head, dim = build_timm(name.removeprefix("timm:"), len(class_names))
        size = input_size or 224
    else:
        spec = backbone(name)
        body, pool, head, dim = spec.split(net if net is not None else spec.net(len(class_names)))
        size = input_size or spec.input_size
    return ImageModel(body, pool, head, dim, class_names, mean=mean, std=std, backbone=name, input_size=size)
