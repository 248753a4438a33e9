"""BPR-MF (Rendle et al. 2009): x_ui = p_u . q_i + b_i -- the no-image baseline."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from services.recommender.models.base import Recommender, bpr_loss, embedding, lr_list, penalty, reg_list


class BPRMF(Recommender):
    """Matrix factorisation trained with BPR; ignores every item input."""

    name = "bprmf"
    needs: set[str] = set()
    DEFAULTS = {
        "fast": {"k": 64, "epochs": 60, "batch_size": 256, "optimizer": "adagrad", "lr": [0.05],
                 "regs": [1e-3, 1e-3], "drop_last": False},
        "study": {"k": 64, "epochs": 4000, "batch_size": 512, "optimizer": "adagrad", "lr": [0.01],
                  "regs": [0.1, 0.001], "drop_last": True},
    }

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

    def batch_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        p = self.P[users]
        x_pos = (p * self.Q[pos]).sum(1) + self.b[pos]
        x_neg = (p * self.Q[neg]).sum(1) + self.b[neg]
        r_user, r_item = reg_list(self.config.regs, 2)
        form = self.config.reg_form
        reg = r_user * penalty([p], form) + r_item * penalty([self.Q[pos], self.Q[neg]], form)
        return bpr_loss(x_pos, x_neg) + reg

    def param_groups(self) -> list[dict[str, Any]]:
        lr_u, lr_i = lr_list(self.config.lr, 2)
        return [{"params": [self.P], "lr": lr_u}, {"params": [self.Q, self.b], "lr": lr_i}]
