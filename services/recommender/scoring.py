"""Top-K lists with the user's training items removed (scores set to -inf), batched over users.

Works with any model that has ``n_users``, ``n_items``, ``device``, ``config.score_batch``,
``item_state(items)`` and ``score_with_state(users, state)`` (every :class:`Recommender`); this
module does not import the models, so the metrics and the training loop can use it without a cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput, NotFound
from services.recommender.allocator import retain_freed_memory
from services.recommender.items import ItemSide
from services.recommender.pairs import PairIndex, as_index


class Scorer(Protocol):
    """What scoring needs from a model."""

    n_users: int
    n_items: int
    config: Any

    @property
    def device(self) -> torch.device: ...

    def item_state(self, items: ItemSide | None = None) -> Any: ...

    def score_with_state(self, users: Tensor, state: Any) -> Tensor: ...


def as_user_tensor(users: Tensor | np.ndarray | list[int], n_users: int) -> Tensor:
    """users: (B,) integer indices -> int64 tensor; NotFound for indices outside [0, n_users)."""
    u = users if isinstance(users, Tensor) else torch.as_tensor(np.asarray(users))
    if u.ndim != 1 or u.dtype.is_floating_point or u.dtype == torch.bool:
        raise InvalidInput(f"users must be a 1-d integer tensor, got {tuple(u.shape)} {u.dtype}")
    u = u.long()
    if u.numel() and (int(u.min()) < 0 or int(u.max()) >= n_users):
        bad = u[(u < 0) | (u >= n_users)][:5].tolist()
        raise NotFound(f"unknown user index {bad} (n_users={n_users})")
    return u


def score_blocks(model: Scorer, users: Tensor, items: ItemSide | None = None,
                 batch_size: int | None = None) -> Iterator[tuple[int, int, Tensor]]:
    """(start, stop, scores (stop-start, I)) for consecutive blocks of ``users`` (on the model's device).

    The item state is computed once; a block is one ``score_with_state`` call (no concatenation).
    """
    retain_freed_memory()
    step = int(batch_size or model.config.score_batch)
    state = model.item_state(items)
    for s in range(0, users.numel(), step):
        e = min(s + step, users.numel())
        yield s, e, model.score_with_state(users[s:e], state)


def topk_of_block(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best ``k`` of masked scores (B,I) -> (scores, items); slots at -inf hold item -1."""
    top_s, top_i = torch.topk(scores, int(k), dim=1)
    return top_s, top_i.masked_fill_(torch.isneginf(top_s), -1)


def topk(
    model: Scorer,
    users: Tensor | None,
    k: int,
    exclude: Interactions | PairIndex | None,
    items: ItemSide | None = None,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(scores (U,k) float32, item indices (U,k) int64) on the CPU, best first.

    users: (U,) indices, or None for all users. ``exclude`` pairs (training items) get -inf (its
    :class:`PairIndex` is built once per interactions object and cached). Slots a user cannot fill
    (fewer than k candidates) hold score -inf and item -1. ``items`` re-scores with a replaced item
    side (no retraining). ``batch_size``: users per block (default the model's ``score_batch``).
    """
    if int(k) < 1 or int(k) > model.n_items:
        raise InvalidInput(f"k must be in [1, {model.n_items}], got {k}")
    if batch_size is not None and batch_size < 1:
        raise InvalidInput("batch_size must be >= 1")
    if isinstance(exclude, Interactions) and (exclude.n_users, exclude.n_items) != (model.n_users, model.n_items):
        raise InvalidInput("exclude interactions do not match the model's users/items")
    dev = model.device
    u = torch.arange(model.n_users) if users is None else as_user_tensor(users, model.n_users)
    u = u.to(dev)
    index = None if exclude is None else as_index(exclude, dev)
    out_scores = torch.empty(u.numel(), int(k))
    out_items = torch.empty(u.numel(), int(k), dtype=torch.long)
    for s, e, scores in score_blocks(model, u, items, batch_size):
        if index is not None:
            index.mask_(scores, u[s:e])
        top_s, top_i = topk_of_block(scores, k)
        out_scores[s:e], out_items[s:e] = top_s, top_i
    return out_scores, out_items
