"""DVBPR (Kang et al. 2017): x_ui = theta_u . CNN(image_i), the CNN trained end-to-end from pixels.

The study's CNN-F (5 conv + 2 FC-4096 at 224x224) is scaled down for 64x64 demo images:
conv(5x5, s4) - pool - conv(3x3) - pool - conv(3x3) - avgpool(2x2) - FC 256 - dropout .5 - FC K
(stride 4 in the first layer as in CNN-F; width = ``cnn_width``). Each batch encodes its distinct items once.
Pixels are scaled to [-1, 1]. After training the item embeddings are cached (``item_emb``);
``score(users, ItemSide(images=...))`` recomputes them from the new images, so attacks on the
feature extractor reach DVBPR only through the images (transfer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advrec_common.datasets.types import Interactions
from services.recommender.defaults import MODEL_DEFAULTS
from services.recommender.items import ItemSide
from services.recommender.models.base import Recommender, penalty


def small_cnn_f(width: int, k: int) -> nn.Sequential:
    """A CNN-F-shaped image encoder: (N,3,H,W) in [-1,1] -> (N,K)."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 5, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * w, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, k),
    )


class DVBPR(Recommender):
    """Deep-style visual BPR: the item embedding is a CNN of the raw image."""

    name = "dvbpr"
    needs = {"images"}
    DEFAULTS = MODEL_DEFAULTS["dvbpr"]
    image_chunk = 256

    def _dims(self, items: ItemSide | None, train: Interactions) -> dict[str, int]:
        return {"image_h": int(items.images.shape[2]), "image_w": int(items.images.shape[3])}

    def _build(self, dims: dict[str, int]) -> None:
        k = self.config.k
        self.theta = nn.Parameter(torch.rand(self.n_users, k) / 100)  # the study's U(0,1)/100
        self.cnn = small_cnn_f(self.config.cnn_width, k)
        self.register_buffer("item_emb", torch.zeros(self.n_items, k))
        self._images: Tensor | None = None

    def _store_items(self, prepared: dict[str, Tensor]) -> None:
        self._images = prepared["images"]

    def encode(self, images: Tensor) -> Tensor:
        """images (n,3,H,W) uint8 -> embeddings (n,K); pixels mapped to [-1,1]."""
        return self.cnn((images.float() - 127.5) / 127.5)

    @torch.no_grad()
    def _encode_all(self, images: Tensor) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self.encode(images[s : s + self.image_chunk]) for s in range(0, len(images), self.image_chunk)])
        finally:
            self.train(was_training)

    def refresh_item_cache(self) -> None:
        if self._images is not None:
            self.item_emb = self._encode_all(self._images)

    def refresh_item_cache_from(self, items: ItemSide) -> None:
        self._images = items.images.to(self.device)
        self.item_emb = self._encode_all(self._images)

    def _item_state(self, prepared: dict[str, Tensor]) -> Tensor:
        if "images" in prepared:
            return self._encode_all(prepared["images"])
        return self.item_emb

    def _score_chunk(self, users: Tensor, state: Any) -> Tensor:
        return self.theta[users] @ state.T

    def batch_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        uniq, inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        emb = self.encode(self._images[uniq])
        th = self.theta[users]
        diff = (th * emb[inv[: pos.numel()]]).sum(1) - (th * emb[inv[pos.numel() :]]).sum(1)
        loss = nn.functional.softplus(-diff.clamp(min=-80.0)).sum()  # the study clips the difference
        r_theta, r_cnn = self.per_block("regs")
        weights = [m.weight for m in self.cnn.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        return loss + r_theta * penalty([th], self.config.reg_form) + r_cnn * penalty(weights, self.config.reg_form)

    def param_groups(self) -> list[dict[str, Any]]:
        (lr,) = self.per_block("lr")
        return [{"params": list(self.parameters()), "lr": lr}]
