"""Paired significance tests over users (scipy.stats), as in the study's tables (p <= 0.05 -> '*')."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from torch import Tensor

from advrec_common.errors import InvalidInput


def _vector(x: Tensor | np.ndarray | Sequence[float], name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise InvalidInput(f"{name} must be a 1-d per-user vector, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{name} contains NaN or infinite values")
    return arr


def paired_tests(before: Tensor | np.ndarray, after: Tensor | np.ndarray) -> dict[str, Any]:
    """Paired t-test (``ttest_rel``) and Wilcoxon signed-rank (``zero_method="zsplit"``), two-sided.

    before/after: (U,) per-user values of the same users. Identical vectors give statistics 0
    and p = 1.0 (scipy would return NaN with a warning); a constant non-zero difference gives
    t = +-inf, p = 0.
    """
    b, a = _vector(before, "before"), _vector(after, "after")
    if b.shape != a.shape:
        raise InvalidInput(f"before and after differ in length: {b.size} vs {a.size}")
    if b.size < 2:
        raise InvalidInput("paired tests need at least 2 users")
    diff = a - b
    out: dict[str, Any] = {"mean_before": float(b.mean()), "mean_after": float(a.mean()),
                           "diff": float(diff.mean()), "n": int(b.size)}
    if not diff.any():
        out.update(t_stat=0.0, t_pvalue=1.0, wilcoxon_stat=0.0, wilcoxon_pvalue=1.0)
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.ptp(diff) == 0:  # constant non-zero shift: zero variance
            out.update(t_stat=float(np.sign(diff[0]) * np.inf), t_pvalue=0.0)
        else:
            t = stats.ttest_rel(a, b)
            out.update(t_stat=float(t.statistic), t_pvalue=float(t.pvalue))
        w = stats.wilcoxon(a, b, zero_method="zsplit")
        out.update(wilcoxon_stat=float(w.statistic), wilcoxon_pvalue=float(w.pvalue))
    return out


def mark(p: float, alpha: float = 0.05) -> str:
    """'*' when p <= alpha (the study's table mark), else ''."""
    return "*" if p is not None and np.isfinite(p) and p <= alpha else ""


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (``scipy.stats.false_discovery_control``), same order as the input."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0:
        return p
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise InvalidInput("p-values must be a 1-d array in [0, 1]")
    return stats.false_discovery_control(p, method="bh")
