"""VBPR (He & McAuley 2016) as in the study's code, and the full form behind a flag.

Study form (default): x_ui = p_u . (q_i + E^T f_i) -- one user vector, no biases, E (D,K).
Full form (``full_vbpr=True``): x_ui = b_i + p_u . q_i + theta_u . (E^T f_i) + beta' . f_i.
f_i are the clean-max-scaled features (:mod:`services.recommender.items`); they are not trained.

:class:`VisualBPRGrads` writes out the gradients of this family (VBPR, AMR, DeepStyle) for the
hand-gradient trainer: each batch projects its distinct items' features once per replicate
(one (n,D) x (D,K) matmul), and E's gradient is the transposed product.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

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
    penalty_grad_,
)


class _BatchItems:
    """A batch's distinct items per replicate: flat rows (n,), pos/neg -> row maps, occurrence counts,
    replicate bounds and the items' scaled features (one (n_r, D) block per replicate)."""

    def __init__(self, batch: Batch, n_items: int, features: Tensor):
        flat = torch.cat([batch.i, batch.j])
        counts = torch.bincount(flat, minlength=batch.n_rep * n_items)
        self.rows = counts.nonzero().squeeze(1)
        n = self.rows.numel()
        self.count = torch.index_select(counts, 0, self.rows).unsqueeze(1).to(features.dtype)
        where = torch.empty_like(counts)
        where.index_copy_(0, self.rows, torch.arange(n, device=flat.device))
        inv = torch.index_select(where, 0, flat)
        self.inv_i, self.inv_j = inv[: batch.i.numel()], inv[batch.i.numel() :]
        self.items = self.rows % n_items if batch.n_rep > 1 else self.rows
        if batch.n_rep == 1:
            self.bounds = [(0, n)]
        else:
            edges = torch.searchsorted(self.rows, torch.arange(batch.n_rep + 1, device=flat.device) * n_items).tolist()
            self.bounds = list(zip(edges[:-1], edges[1:], strict=True))
        self.features = [torch.index_select(features, 0, self.items[a:b]) for a, b in self.bounds]

    def project(self, feats: list[Tensor], M: Tensor) -> Tensor:
        """Per replicate r: feats[r] (n_r,D) @ M[r] (D,...) -> stacked rows (n, ...)."""
        out = [f @ M[r] for r, f in enumerate(feats)]
        return out[0] if len(out) == 1 else torch.cat(out)

    def project_back(self, feats: list[Tensor], g: Tensor, out: Tensor) -> None:
        """out[r] += feats[r]^T @ g[rows of r] -- the gradient of a projection matrix."""
        for r, (a, b) in enumerate(self.bounds):
            out[r].add_(feats[r].T @ g[a:b])


def _pair_grads(U: Tensor, V: Tensor, bias: Tensor | None, bi: _BatchItems, batch: Batch
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """BPR terms of x = U.(V_i - V_j) (+ bias_i - bias_j) -> (loss (R,), dL/dU (RB,K'), dL/dV (n,K'), dL/dbias (n,))."""
    vi, vj = torch.index_select(V, 0, bi.inv_i), torch.index_select(V, 0, bi.inv_j)
    d = vi - vj
    x = (U * d).sum(1)
    if bias is not None:
        x.add_(torch.index_select(bias, 0, bi.inv_i)).sub_(torch.index_select(bias, 0, bi.inv_j))
    z = torch.sigmoid(-x)  # -dL/dx
    zc = z.unsqueeze(1)
    g_u = d.mul_(zc.neg())
    zu = U * zc
    # (index_add_ with alpha != 1 takes a path ~4x slower than negating the source first)
    g_v = torch.zeros_like(V).index_add_(0, bi.inv_j, zu).index_add_(0, bi.inv_i, zu.neg_())
    g_b = None
    if bias is not None:
        g_b = torch.zeros_like(bias).index_add_(0, bi.inv_j, z).index_add_(0, bi.inv_i, z.neg())
    return F.softplus(-x).view(batch.n_rep, batch.size).sum(1), g_u, g_v, g_b


class VisualBPRGrads:
    """Hand-written gradients of the VBPR family's ``batch_loss`` over stacked tables.

    Item vector V_i = q_i + E^T f_i (+ ``_item_offset``) or, in the full form, [q_i ; E^T f_i] with a
    bias b_i + beta'.f_i; user vector P_u or [P_u ; theta_u]. Regularisers as ``pair_terms``:
    r_u pen(user vectors) + r_i pen(V_pos, V_neg) + r_e pen(E (, beta)). AMR adds the adversarial
    term through ``_adversarial``.
    """

    full: bool = False

    def _item_offset(self, W: dict[str, Tensor], bi: _BatchItems, batch: Batch) -> Tensor | None:
        return None

    def _item_offset_grad(self, G: dict[str, Tensor], g_v: Tensor, bi: _BatchItems, batch: Batch,
                          touched: dict[str, list[Tensor]]) -> None:
        """Backward of ``_item_offset`` (DeepStyle's category vectors)."""

    def _adversarial(self, batch: Batch) -> bool:
        return False

    def bpr_grads(self, W: dict[str, Tensor], G: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, list[Tensor]]]:
        cfg = self.config
        full = self.full
        form, (r_u, r_i, r_e) = cfg.reg_form, self.per_block("regs")
        k = W["Q"].shape[1]
        bi = _BatchItems(batch, self.n_items, self.items_features)
        vis = bi.project(bi.features, W["E"])
        q = torch.index_select(W["Q"], 0, bi.rows)
        offset = None if full else self._item_offset(W, bi, batch)
        if full:
            V = torch.cat([q, vis], 1)
            bias = torch.index_select(W["b"], 0, bi.rows) + bi.project(bi.features, W["beta"].unsqueeze(-1)).squeeze(1)
            U = torch.cat([torch.index_select(W["P"], 0, batch.u), torch.index_select(W["theta"], 0, batch.u)], 1)
        else:
            V = q + vis if offset is None else (q + vis).add_(offset)
            bias = None
            U = torch.index_select(W["P"], 0, batch.u)
        loss, g_u, g_v, g_b = _pair_grads(U, V, bias, bi, batch)
        adv = None
        if self._adversarial(batch):
            adv = self._adversarial_grads(W, bi, U, q, offset, g_v, g_b, batch)
            loss = loss + cfg.adv_lambda * adv[0]
        # regularisers: per occurrence of a user row / item row in the batch
        penalty_grad_(g_u, U, r_u, form)
        if r_i:
            g_v.add_(V * (2 * r_i) * bi.count if form == "l2" else r_i * bi.count)
        touched: dict[str, list[Tensor]] = {"P": [batch.u], "Q": [bi.rows]}
        G["P"].index_add_(0, batch.u, g_u[:, :k] if full else g_u)
        if full:
            G["theta"].index_add_(0, batch.u, g_u[:, k:])
            touched["theta"] = [batch.u]
        g_q, g_vis = (g_v[:, :k], g_v[:, k:]) if full else (g_v, g_v)
        G["Q"].index_add_(0, bi.rows, g_q)
        bi.project_back(bi.features, g_vis, G["E"])
        self._item_offset_grad(G, g_v, bi, batch, touched)
        if full:
            G["b"].index_add_(0, bi.rows, g_b)
            bi.project_back(bi.features, g_b.unsqueeze(1), G["beta"].unsqueeze(-1))
            touched["b"] = [bi.rows]
        if adv is not None:
            _, f_adv, g_u2, g_v2, g_b2 = adv
            lam = cfg.adv_lambda
            g_u2.mul_(lam)
            g_v2.mul_(lam)
            G["P"].index_add_(0, batch.u, g_u2[:, :k] if full else g_u2)
            if full:
                G["theta"].index_add_(0, batch.u, g_u2[:, k:])
            g_q2, g_vis2 = (g_v2[:, :k], g_v2[:, k:]) if full else (g_v2, g_v2)
            G["Q"].index_add_(0, bi.rows, g_q2)
            bi.project_back(f_adv, g_vis2, G["E"])
            self._item_offset_grad(G, g_v2, bi, batch, touched)
            if full:
                g_b2.mul_(lam)
                G["b"].index_add_(0, bi.rows, g_b2)
                bi.project_back(f_adv, g_b2.unsqueeze(1), G["beta"].unsqueeze(-1))
        if r_e:
            penalty_grad_(G["E"], W["E"], r_e, form)
            if full:
                penalty_grad_(G["beta"], W["beta"], r_e, form)
        return loss, touched

    def _adversarial_grads(self, W: dict[str, Tensor], bi: _BatchItems, U: Tensor, q: Tensor, offset: Tensor | None,
                           g_v: Tensor, g_b: Tensor | None, batch: Batch) -> tuple:
        """AMR: Delta_i = eps * g_i/||g_i|| with g = dL_BPR/df (clean, stop-gradient) per distinct item;
        -> (adversarial BPR loss (R,), perturbed features, its dL/dU, dL/dV, dL/dbias)."""
        cfg, full, k = self.config, self.full, q.shape[1]
        f_adv = []
        for r, (a, b) in enumerate(bi.bounds):
            f = bi.features[r]
            if cfg.adv_type == "grad":
                g_vis = g_v[a:b, k:] if full else g_v[a:b]
                direction = g_vis @ W["E"][r].T
                if full:
                    direction.addr_(g_b[a:b], W["beta"][r])
            else:
                direction = torch.randn(f.shape, generator=batch.generators[r]).to(f.device) * 0.01
            f_adv.append(f + cfg.adv_eps * F.normalize(direction, dim=1))
        vis = bi.project(f_adv, W["E"])
        if full:
            V = torch.cat([q, vis], 1)
            bias = torch.index_select(W["b"], 0, bi.rows) + bi.project(f_adv, W["beta"].unsqueeze(-1)).squeeze(1)
        else:
            V = q + vis if offset is None else (q + vis).add_(offset)
            bias = None
        loss, g_u, g_v2, g_b2 = _pair_grads(U, V, bias, bi, batch)
        return loss, f_adv, g_u, g_v2, g_b2


class VBPR(VisualBPRGrads, Recommender):
    """Visual BPR over pooled CNN features."""

    name = "vbpr"
    needs = {"features"}
    DEFAULTS = MODEL_DEFAULTS["vbpr"]

    @property
    def full(self) -> bool:  # type: ignore[override]
        return bool(self.config.full_vbpr)

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

    def score_items(self, users: Tensor, state: Any, items: Tensor) -> Tensor:
        v, b = state
        return dot_items(self._user_vectors(users), v, b, items)

    def pair_terms(self, users: Tensor, pos: Tensor, neg: Tensor, f_pos: Tensor, f_neg: Tensor) -> tuple[Tensor, Tensor]:
        """(BPR loss, regulariser) of a batch with the given (possibly perturbed) item features."""
        u = self._user_vectors(users)
        v_pos, b_pos = self._item_vectors(pos, f_pos)
        v_neg, b_neg = self._item_vectors(neg, f_neg)
        x_pos, x_neg = (u * v_pos).sum(1), (u * v_neg).sum(1)
        if b_pos is not None:
            x_pos, x_neg = x_pos + b_pos, x_neg + b_neg
        r_u, r_i, r_e = self.per_block("regs")
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
        lr_u, lr_i, lr_e = self.per_block("lr")
        full = self.config.full_vbpr
        return [
            {"params": [self.P] + ([self.theta] if full else []), "lr": lr_u},
            {"params": [self.Q] + ([self.b] if full else []), "lr": lr_i},
            {"params": [self.E] + ([self.beta] if full else []), "lr": lr_e},
        ]

    def train_tables(self) -> dict[str, tuple[str, float]]:
        lr_u, lr_i, lr_e = self.per_block("lr")
        tables = {"P": ("user", lr_u), "Q": ("item", lr_i), "E": ("dense", lr_e)}
        if self.config.full_vbpr:
            tables.update(theta=("user", lr_u), b=("item", lr_i), beta=("dense", lr_e))
        return tables
