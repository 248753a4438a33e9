"""Any ``timm`` model as a backbone (``backbone="timm:<name>"``); timm is an optional extra, imported only here."""

from __future__ import annotations

import torch
from torch import nn

from advrec_common.errors import InvalidInput


def build_timm(name: str, num_classes: int) -> tuple[nn.Module, nn.Module, nn.Module, int]:
    """(body, pool, head, feature_dim) of a randomly initialised ``timm`` model (never downloads)."""
    try:
        import timm
    except ImportError:
        raise InvalidInput(f"backbone 'timm:{name}' needs the optional extra: pip install 'advrec[timm]'") from None
    if name not in timm.list_models():
        raise InvalidInput(f"timm has no model {name!r}")
    net = timm.create_model(name, pretrained=False, num_classes=num_classes)

    class _Body(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.forward_features(x)

    class _Pool(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.forward_head(x, pre_logits=True)

    return _Body(net), _Pool(net), net.get_classifier(), int(net.num_features)
