"""DeepStyle (Liu et al. 2017): x_ui = gamma_u . (E^T f_i - l_{c(i)} + gamma_i).

Subtracting the category embedding l_c leaves the "style" part of the visual feature. Categories
are metadata: a replacement ItemSide may omit them and keeps the fitted ones.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from advrec_common.datasets.types import Interactions
from services.recommender.defaults import MODEL_DEFAULTS
from services.recommender.items import ItemSide
from services.recommender.models.base import (
    Batch,
    Recommender,
    bpr_loss,
    dot_items,
    embedding,
    penalty,
)
from services.recommender.models.vbpr import VisualBPRGrads, _BatchItems


class DeepStyle(VisualBPRGrads, Recommender):
    """Style-aware visual BPR with a per-category embedding."""

    name = "deepstyle"
    needs = {"features", "categories"}
    DEFAULTS = MODEL_DEFAULTS["deepstyle"]

    def _dims(self, items: ItemSide | None, train: Interactions) -> dict[str, int]:
        return {"feature_dim": int(items.features.shape[1]), "n_categories": int(items.categories.max()) + 1}

    def _build(self, dims: dict[str, int]) -> None:
        k = self.config.k
        self.P = embedding(self.n_users, k)
        self.Q = embedding(self.n_items, k)
        self.L = embedding(dims["n_categories"], k)
        self.E = embedding(dims["feature_dim"], k)
        self._register_item_buffers(dims)

    def _item_vectors(self, idx: Tensor | None, f: Tensor, cats: Tensor) -> Tensor:
        q = self.Q if idx is None else self.Q[idx]
        return f @ self.E - self.L[cats] + q

    def _item_state(self, prepared: dict[str, Tensor]) -> Tensor:
        return self._item_vectors(None, prepared["features"], prepared["categories"])

    def _score_chunk(self, users: Tensor, state: Any) -> Tensor:
        return self.P[users] @ state.T

    def score_items(self, users: Tensor, state: Any, items: Tensor) -> Tensor:
        return dot_items(self.P[users], state, None, items)

    def batch_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        f, c = self.items_features, self.items_categories
        u = self.P[users]
        v_pos = self._item_vectors(pos, f[pos], c[pos])
        v_neg = self._item_vectors(neg, f[neg], c[neg])
        r_u, r_i, r_e = self.per_block("regs")
        form = self.config.reg_form
        reg = r_u * penalty([u], form) + r_i * penalty([v_pos, v_neg], form)
        if r_e:
            reg = reg + r_e * penalty([self.E], form)
        return bpr_loss((u * v_pos).sum(1), (u * v_neg).sum(1)) + reg

    def param_groups(self) -> list[dict[str, Any]]:
        lr_u, lr_i, lr_e = self.per_block("lr")
        return [{"params": [self.P], "lr": lr_u}, {"params": [self.Q, self.L], "lr": lr_i},
                {"params": [self.E], "lr": lr_e}]

    def train_tables(self) -> dict[str, tuple[str, float]]:
        lr_u, lr_i, lr_e = self.per_block("lr")
        return {"P": ("user", lr_u), "Q": ("item", lr_i), "L": ("category", lr_i), "E": ("dense", lr_e)}

    def _category_rows(self, bi: _BatchItems, batch: Batch) -> Tensor:
        """Flat rows of the stacked category table for the batch's distinct items."""
        cats = self.items_categories[bi.items]
        if batch.n_rep == 1:
            return cats
        return cats + (bi.rows // self.n_items) * self.dims["n_categories"]

    def _item_offset(self, W: dict[str, Tensor], bi: _BatchItems, batch: Batch) -> Tensor:
        return W["L"].index_select(0, self._category_rows(bi, batch)).neg_()

    def _item_offset_grad(self, G: dict[str, Tensor], g_v: Tensor, bi: _BatchItems, batch: Batch,
                          touched: dict[str, list[Tensor]]) -> None:
        rows = self._category_rows(bi, batch)
        G["L"].index_add_(0, rows, g_v.neg())
        touched["L"] = touched.get("L", []) + [rows]
