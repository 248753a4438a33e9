"""BPR-MF (Rendle et al. 2009): x_ui = p_u . q_i + b_i -- the no-image baseline."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from services.recommender.defaults import MODEL_DEFAULTS
from services.recommender.models.base import (
    Batch,
    Recommender,
    bpr_loss,
    dot_items,
    embedding,
    penalty,
    penalty_grad_,
)


class BPRMF(Recommender):
    """Matrix factorisation trained with BPR; ignores every item input."""

    name = "bprmf"
    needs: set[str] = set()
    DEFAULTS = MODEL_DEFAULTS["bprmf"]

    def _build(self, dims: dict[str, int]) -> None:
        k = self.config.k
        self.P = embedding(self.n_users, k)
        self.Q = embedding(self.n_items, k)
        self.b = nn.Parameter(torch.zeros(self.n_items))

    def _item_state(self, prepared: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.Q, self.b

    def _score_chunk(self, users: Tensor, state: Any) -> Tensor:
        q, b = state
        return self.P[users] @ q.T + b

    def score_items(self, users: Tensor, state: Any, items: Tensor) -> Tensor:
        q, b = state
        return dot_items(self.P[users], q, b, items)

    def batch_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        p = self.P[users]
        x_pos = (p * self.Q[pos]).sum(1) + self.b[pos]
        x_neg = (p * self.Q[neg]).sum(1) + self.b[neg]
        r_user, r_item = self.per_block("regs")
        form = self.config.reg_form
        reg = r_user * penalty([p], form) + r_item * penalty([self.Q[pos], self.Q[neg]], form)
        return bpr_loss(x_pos, x_neg) + reg

    def param_groups(self) -> list[dict[str, Any]]:
        lr_u, lr_i = self.per_block("lr")
        return [{"params": [self.P], "lr": lr_u}, {"params": [self.Q, self.b], "lr": lr_i}]

    def train_tables(self) -> dict[str, tuple[str, float]]:
        lr_u, lr_i = self.per_block("lr")
        return {"P": ("user", lr_u), "Q": ("item", lr_i), "b": ("item", lr_i)}

    def bpr_grads(self, W: dict[str, Tensor], G: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, list[Tensor]]]:
        # d softplus(-x)/dx = -sigmoid(-x) =: -z;  x = p.(q_i - q_j) + b_i - b_j
        u, i, j = batch.u, batch.i, batch.j
        p, qi, qj = (torch.index_select(t, 0, ix) for t, ix in ((W["P"], u), (W["Q"], i), (W["Q"], j)))
        b = W["b"]
        d = qi - qj
        x = (p * d).sum(1).add_(torch.index_select(b, 0, i)).sub_(torch.index_select(b, 0, j))
        z = torch.sigmoid(-x)
        zc = z.unsqueeze(1)
        r_u, r_i = self.per_block("regs")
        form = self.config.reg_form
        # (a per-table penalty, count_row * 2r * w_row, measured slower than these per-row terms)
        G["P"].index_add_(0, u, penalty_grad_(d.mul_(zc.neg()), p, r_u, form))
        zp = p.mul_(zc)
        G["Q"].index_add_(0, i, penalty_grad_(zp.neg(), qi, r_i, form))
        G["Q"].index_add_(0, j, penalty_grad_(zp, qj, r_i, form))
        G["b"].index_add_(0, j, z)
        G["b"].index_add_(0, i, z.neg())  # index_add_ with alpha=-1 is ~4x slower than this
        loss = F.softplus(-x).view(batch.n_rep, batch.size).sum(1)
        return loss, {"P": [u], "Q": [i, j], "b": [i, j]}
