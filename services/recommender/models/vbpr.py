"""VBPR (He & McAuley 2016) as in the study's code, and the full form behind a flag.

Study form (default): x_ui = p_u . (q_i + E^T f_i) -- one user vector, no biases, E (D,K).
Full form (``full_vbpr=True``): x_ui = b_i + p_u . q_i + theta_u . (E^T f_i) + beta' . f_i.
f_i are the clean-max-scaled features (:mod:`services.recommender.items`); they are not trained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advrec_common.datasets.types import Interactions
from services.recommender.items import ItemSide
from services.recommender.models.base import Recommender, bpr_loss, embedding, lr_list, penalty, reg_list

_STUDY = {"k": 64, "epochs": 4000, "batch_size": 512, "optimizer": "adagrad", "lr": [0.01, 1e-4, 1e-3],
          "regs": [0.1, 0.001, 0.0], "drop_last": True}
_FAST = {"k": 64, "epochs": 60, "batch_size": 256, "optimizer": "adagrad", "lr": [0.05, 0.05, 0.01],
         "regs": [1e-3, 1e-3, 0.0], "drop_last": False}


class VBPR(Recommender):
    """Visual BPR over pooled CNN features."""

    name = "vbpr"
    needs = {"features"}
    DEFAULTS = {"fast": _FAST, "study": _STUDY}

    def _dims(self, items: ItemSide | None, train: Interactions) -> dict[str, int]:
        return {"feature_dim": int(items.features.shape[1])}

    def _build(self, dims: dict[str, int]) -> None:
        k, d = self.config.k, dims["feature_dim"]
        self.P = embedding(self.n_users, k)
        self.Q = embedding(self.n_items, k)
        self.E = embedding(d, k)
        if self.config.full_vbpr:
            self.theta = embedding(self.n_users, k)
            self.b = nn.Parameter(torch.zeros(self.n_items))
            self.beta = nn.Parameter(torch.zeros(d))
        self._register_item_buffers(dims)

    # f: (n,D) scaled features of the items in ``idx``
    def _item_vectors(self, idx: Tensor | None, f: Tensor) -> tuple[Tensor, Tensor | None]:
        """(item latent (n,K) or [q ; E^T f] (n,2K) in the full form, bias (n,) or None)."""
        q = self.Q if idx is None else self.Q[idx]
        visual = f @ self.E
        if not self.config.full_vbpr:
            return q + visual, None
        b = self.b if idx is None else self.b[idx]
        return torch.cat([q, visual], 1), b + f @ self.beta

    def _user_vectors(self, users: Tensor) -> Tensor:
        if not self.config.full_vbpr:
            return self.P[users]
        return torch.cat([self.P[users], self.theta[users]], 1)

    def _item_state(self, prepared: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        return self._item_vectors(None, prepared["features"])

    def _score_chunk(self, users: Tensor, state: Any) -> Tensor:
        v, b = state
        s = self._user_vectors(users) @ v.T
        return s if b is None else s + b

    def pair_terms(self, users: Tensor, pos: Tensor, neg: Tensor, f_pos: Tensor, f_neg: Tensor) -> tuple[Tensor, Tensor]:
        """(BPR loss, regulariser) of a batch with the given (possibly perturbed) item features."""
        u = self._user_vectors(users)
        v_pos, b_pos = self._item_vectors(pos, f_pos)
        v_neg, b_neg = self._item_vectors(neg, f_neg)
        x_pos, x_neg = (u * v_pos).sum(1), (u * v_neg).sum(1)
        if b_pos is not None:
            x_pos, x_neg = x_pos + b_pos, x_neg + b_neg
        r_u, r_i, r_e = reg_list(self.config.regs, 3)
        form = self.config.reg_form
        # the study regularises q~ = q + E^T f (its item vector), p_u and E
        reg = r_u * penalty([u], form) + r_i * penalty([v_pos, v_neg], form)
        if r_e:
            reg = reg + r_e * penalty([self.E] + ([self.beta] if self.config.full_vbpr else []), form)
        return bpr_loss(x_pos, x_neg), reg

    def _batch_features(self, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unique batch items' features (n,D) and the inverse index of pos and neg into them."""
        uniq, inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        return self.items_features[uniq], inv[: pos.numel()], inv[pos.numel() :]

    def batch_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        loss, reg = self.pair_terms(users, pos, neg, self.items_features[pos], self.items_features[neg])
        return loss + reg

    def param_groups(self) -> list[dict[str, Any]]:
        lr_u, lr_i, lr_e = lr_list(self.config.lr, 3)
        full = self.config.full_vbpr
        return [
            {"params": [self.P] + ([self.theta] if full else []), "lr": lr_u},
            {"params": [self.Q] + ([self.b] if full else []), "lr": lr_i},
            {"params": [self.E] + ([self.beta] if full else []), "lr": lr_e},
        ]
