"""ACF (Chen et al. 2017): component- and item-level attention over the user's history.

Component level (over the R regions x_lm of a positive item l):
    beta(u,l,m) = softmax_m  w_c^T ReLU(W_cu u + W_cx x_lm + b_c)            x_l = sum_m beta x_lm
Item level (over the user's training positives l in R(u), padded per user, masked):
    alpha(u,l)  = softmax_l  w_i^T ReLU(W_iu u + W_iv v_l + W_ip p_l + W_ix x_l + b_i)
Score: x_uj = (u + sum_l alpha(u,l) p_l) . v_j  -- the visual input reaches the score through the
history, so attacked region features change the user representation. Since W_ix is linear,
W_ix x_l = sum_m beta W_ix x_lm: regions are projected once per item to the attention width.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advrec_common.datasets.types import Interactions
from services.recommender.defaults import MODEL_DEFAULTS
from services.recommender.items import ItemSide
from services.recommender.models.base import Recommender, bpr_loss, embedding, penalty


def padded_histories(train: Interactions, max_len: int) -> tuple[np.ndarray, int]:
    """(n_users, L) int64 matrix of each user's most recent positives (-1 = padding), and L.

    Recency = timestamp when present, else row order; vectorised (no loop over users).
    """
    order_key = train.timestamp if train.timestamp is not None else np.arange(len(train))
    order = np.lexsort((order_key, train.user))
    users, items = train.user[order], train.item[order]
    counts = np.bincount(users, minlength=train.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(users)) - starts[users]
    length = int(min(max_len, max(1, counts.max(initial=1))))
    skip = np.maximum(counts - length, 0)
    keep = pos >= skip[users]
    hist = np.full((train.n_users, length), -1, dtype=np.int64)
    hist[users[keep], (pos - skip[users])[keep]] = items[keep]
    return hist, length


class ACF(Recommender):
    """Attentive Collaborative Filtering over spatial (region) features."""

    name = "acf"
    needs = {"spatial"}
    sample_by_user = True  # the user's attention over its history is computed once per batch
    DEFAULTS = MODEL_DEFAULTS["acf"]

    def _dims(self, items: ItemSide | None, train: Interactions) -> dict[str, int]:
        _, length = padded_histories(train, self.config.max_history)
        return {"regions": int(items.spatial.shape[1]), "region_dim": int(items.spatial.shape[2]),
                "history_len": length}

    def _build(self, dims: dict[str, int]) -> None:
        k, h, d = self.config.k, self.config.hidden, dims["region_dim"]
        self.U = embedding(self.n_users, k)
        self.V = embedding(self.n_items, k)
        self.Pa = embedding(self.n_items, k)  # auxiliary item vectors p_l
        self.W_cu, self.W_cx = nn.Linear(k, h), nn.Linear(d, h, bias=False)
        self.w_c = nn.Linear(h, 1, bias=False)
        self.W_iu, self.W_iv = nn.Linear(k, h), nn.Linear(k, h, bias=False)
        self.W_ip, self.W_ix = nn.Linear(k, h, bias=False), nn.Linear(d, h, bias=False)
        self.w_i = nn.Linear(h, 1, bias=False)
        self._register_item_buffers(dims)
        self.register_buffer("history", torch.full((self.n_users, dims["history_len"]), -1, dtype=torch.long))

    def on_train_start(self, train: Interactions) -> None:
        hist, _ = padded_histories(train, self.dims["history_len"])
        self.history = torch.from_numpy(hist).to(self.device)

    def _project(self, spatial: Tensor) -> tuple[Tensor, Tensor]:
        """Region features (n,R,D') -> component-attention and item-attention projections (n,R,h) each."""
        return self.W_cx(spatial), self.W_ix(spatial)

    def _user_repr(self, users: Tensor, xc: Tensor, xi: Tensor, item_index: Tensor | None) -> Tensor:
        """User representations (B,K); xc/xi are projections of the items listed in ``item_index``
        (all items when None) -- histories are mapped into that index by searchsorted."""
        hist = self.history[users]
        mask = hist >= 0
        width = int(mask.sum(1).max()) if hist.numel() else 0
        u = self.U[users]
        if width == 0:
            return u
        hist, mask = hist[:, :width], mask[:, :width]
        h_items = hist.clamp(min=0)
        rows = h_items if item_index is None else torch.searchsorted(item_index, h_items).clamp(max=len(item_index) - 1)
        comp = torch.relu(self.W_cu(u)[:, None, None, :] + xc[rows])  # (B,L,R,h)
        beta = torch.softmax(self.w_c(comp).squeeze(-1), dim=-1)  # (B,L,R)
        x_proj = (beta.unsqueeze(-1) * xi[rows]).sum(2)  # (B,L,h) = W_ix x_l
        p_l, v_l = self.Pa[h_items], self.V[h_items]
        att = torch.relu(self.W_iu(u)[:, None, :] + self.W_iv(v_l) + self.W_ip(p_l) + x_proj)
        logits = self.w_i(att).squeeze(-1).masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(logits, dim=1).nan_to_num(0.0) * mask
        return u + (alpha.unsqueeze(-1) * p_l).sum(1)

    def _item_state(self, prepared: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self._project(prepared["spatial"])

    def _score_chunk(self, users: Tensor, state: Any) -> Tensor:
        xc, xi = state
        return self._user_repr(users, xc, xi, None) @ self.V.T

    def batch_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        uniq_users, u_inv = torch.unique(users, return_inverse=True)
        hist = self.history[uniq_users]
        items_needed = torch.unique(hist[hist >= 0])
        if items_needed.numel() == 0:
            items_needed = torch.zeros(1, dtype=torch.long, device=users.device)
        xc, xi = self._project(self.items_spatial[items_needed])
        reprs = self._user_repr(uniq_users, xc, xi, items_needed)[u_inv]
        v_pos, v_neg = self.V[pos], self.V[neg]
        (reg,) = self.per_block("regs")
        penalty_ = reg * penalty([self.U[users], v_pos, v_neg], self.config.reg_form)
        return bpr_loss((reprs * v_pos).sum(1), (reprs * v_neg).sum(1)) + penalty_

    def param_groups(self) -> list[dict[str, Any]]:
        (lr,) = self.per_block("lr")
        return [{"params": list(self.parameters()), "lr": lr}]
