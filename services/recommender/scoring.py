"""Top-K lists with the user's training items removed (scores set to -inf), batched over users."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.models.base import as_user_tensor
from services.recommender.pairs import PairIndex

if TYPE_CHECKING:
    from services.recommender.items import ItemSide
    from services.recommender.models.base import Recommender


def topk(
    model: Recommender,
    users: Tensor | None,
    k: int,
    exclude: Interactions | PairIndex | None,
    items: ItemSide | None = None,
    batch_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """(scores (U,k) float32, item indices (U,k) int64) on the CPU, best first.

    users: (U,) indices, or None for all users. ``exclude`` pairs (training items) get -inf,
    via a pair index built once. Slots a user cannot fill (fewer than k candidates) hold
    score -inf and item -1. ``items`` re-scores with a replaced item side (no retraining).
    """
    if int(k) < 1 or int(k) > model.n_items:
        raise InvalidInput(f"k must be in [1, {model.n_items}], got {k}")
    if batch_size < 1:
        raise InvalidInput("batch_size must be >= 1")
    if isinstance(exclude, Interactions) and (exclude.n_users, exclude.n_items) != (model.n_users, model.n_items):
        raise InvalidInput("exclude interactions do not match the model's users/items")
    dev = model.device
    u = torch.arange(model.n_users) if users is None else as_user_tensor(users, model.n_users)
    u = u.to(dev)
    index = None if exclude is None else (exclude if isinstance(exclude, PairIndex) else PairIndex(exclude, dev))
    state = model.item_state(items)
    out_scores, out_items = [], []
    for s in range(0, u.numel(), batch_size):
        batch = u[s : s + batch_size]
        scores = model.score_with_state(batch, state)
        if index is not None:
            index.mask_(scores, batch)
        top_s, top_i = torch.topk(scores, int(k), dim=1)
        top_i = top_i.masked_fill(torch.isneginf(top_s), -1)
        out_scores.append(top_s.cpu())
        out_items.append(top_i.cpu())
    if not out_scores:
        return torch.empty(0, int(k)), torch.empty(0, int(k), dtype=torch.long)
    return torch.cat(out_scores), torch.cat(out_items)
