"""Optimisers over stacked parameter tables with hand-written gradients (the BPR family's training).

A *row table* is an embedding table of all replicates stacked along rows, ``(R*n, ...)``: replicate r
owns rows ``r*n .. r*n+n-1``. A *dense* parameter is ``(R, ...)``. Gradients are accumulated by the
model into :attr:`TableOptimizer.grad` (``index_add_`` of per-pair rows) and the model names, per
row table, the row indices it touched (duplicates allowed).

:class:`RowAdagrad` is ``torch.optim.Adagrad(fused=True)`` (``lr_decay=0``, ``weight_decay=0``,
``eps=1e-10``): ``acc += g*g; w -= lr * g / (sqrt(acc) + eps)`` element-wise, in torch's fused CPU
kernel (one pass; it rounds like the unfused update to within 1 ulp). A row without gradient is left
exactly unchanged by that update (``acc + 0 = acc``, ``w - 0 = w``), so updating only the touched
rows is *exact*, not an approximation; small tables (or big batches) take the dense path, which
gives bit-identical results. :class:`DenseAdam` is ``torch.optim.Adam``'s single-tensor
update over whole tables (Adam's moments decay for untouched rows, so a lazy Adam would change the
numbers; this one does not).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

ADAGRAD_EPS = 1e-10  # torch.optim.Adagrad's default
# a row table takes the dense path when the touched-row candidates reach this fraction of its rows,
# or when it is so small that a dense pass costs less than the sparse path's extra operations
DENSE_FRACTION = 0.5
DENSE_NUMEL = 1 << 15


class TableOptimizer:
    """Shared plumbing: parameters ``{name: tensor}``, learning rates, zeroed gradient buffers."""

    def __init__(self, params: dict[str, Tensor], lrs: dict[str, float], row_tables: set[str]):
        self.params, self.lrs, self.row_tables = params, lrs, row_tables
        self.grad = {name: torch.zeros_like(p) for name, p in params.items()}

    def step(self, touched: dict[str, Sequence[Tensor]]) -> None:
        raise NotImplementedError


def touched_rows(indices: Sequence[Tensor], n_rows: int, numel: int | None = None) -> Tensor | None:
    """Sorted distinct rows among ``indices`` (flat), or None when a dense update is cheaper."""
    total = sum(int(ix.numel()) for ix in indices)
    if total >= DENSE_FRACTION * n_rows or (numel is not None and numel <= DENSE_NUMEL):
        return None
    counts = torch.bincount(indices[0], minlength=n_rows)
    for ix in indices[1:]:
        counts += torch.bincount(ix, minlength=n_rows)
    return counts.nonzero().squeeze(1)


_STEP = torch.tensor(1.0)  # with lr_decay = 0 the step count does not enter Adagrad's update


def adagrad_(w: Tensor, g: Tensor, acc: Tensor, lr: float) -> None:
    """In place: ``acc += g*g; w -= lr * g / (sqrt(acc) + eps)`` (torch's fused Adagrad kernel if present)."""
    fused = getattr(torch, "_fused_adagrad_", None)
    if fused is not None and w.device.type == "cpu":
        fused([w], [g], [acc], [_STEP], lr=lr, lr_decay=0.0, weight_decay=0.0, eps=ADAGRAD_EPS, maximize=False)
        return
    acc.addcmul_(g, g)
    w.addcdiv_(g, acc.sqrt().add_(ADAGRAD_EPS), value=-lr)


class RowAdagrad(TableOptimizer):
    """Adagrad with an initial accumulator value (TF1's 0.1 in the study) that updates touched rows only."""

    def __init__(self, params: dict[str, Tensor], lrs: dict[str, float], row_tables: set[str],
                 initial_accumulator_value: float = 0.1):
        super().__init__(params, lrs, row_tables)
        self.acc = {name: torch.full_like(p, initial_accumulator_value) for name, p in params.items()}

    def step(self, touched: dict[str, Sequence[Tensor]]) -> None:
        found: dict[tuple[int, ...], Tensor | None] = {}  # tables touched by the same indices share rows
        for name, w in self.params.items():
            g, acc, lr = self.grad[name], self.acc[name], self.lrs[name]
            rows = None
            if name in self.row_tables and name in touched:
                key = (w.shape[0], w.numel() <= DENSE_NUMEL, *(id(ix) for ix in touched[name]))
                if key not in found:
                    found[key] = touched_rows(touched[name], w.shape[0], w.numel())
                rows = found[key]
            if rows is None:
                adagrad_(w, g, acc, lr)
                g.zero_()
                continue
            g_rows, a_rows, w_rows = (torch.index_select(t, 0, rows) for t in (g, acc, w))
            adagrad_(w_rows, g_rows, a_rows, lr)
            acc.index_copy_(0, rows, a_rows)
            w.index_copy_(0, rows, w_rows)
            g.index_fill_(0, rows, 0.0)


class DenseAdam(TableOptimizer):
    """``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8, no weight decay) written out over whole tables."""

    def __init__(self, params: dict[str, Tensor], lrs: dict[str, float], row_tables: set[str],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lrs, row_tables)
        self.betas, self.eps, self.steps = betas, eps, 0
        self.m = {name: torch.zeros_like(p) for name, p in params.items()}
        self.v = {name: torch.zeros_like(p) for name, p in params.items()}

    def step(self, touched: dict[str, Sequence[Tensor]]) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        bias1, bias2_sqrt = 1 - beta1**self.steps, (1 - beta2**self.steps) ** 0.5
        for name, w in self.params.items():
            g, m, v = self.grad[name], self.m[name], self.v[name]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            w.addcdiv_(m, (v.sqrt() / bias2_sqrt).add_(self.eps), value=-self.lrs[name] / bias1)
            g.zero_()


def make_table_optimizer(kind: str, params: dict[str, Tensor], lrs: dict[str, float],
                         row_tables: set[str]) -> TableOptimizer:
    """'adagrad' -> RowAdagrad (accumulator 0.1, as TF1's Adagrad that the study ran), 'adam' -> DenseAdam."""
    if kind == "adagrad":
        return RowAdagrad(params, lrs, row_tables, initial_accumulator_value=0.1)
    return DenseAdam(params, lrs, row_tables)
