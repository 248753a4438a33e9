"""Effects with their uncertainty: a change in a metric across replicated trainings, and across users.

A *replicate* is one training seed (and, for a placebo, one random draw). For a cell trained R
times, replicate r gives the metric before (the clean model of seed r) and after (the model of seed
r trained on the perturbed features, or the clean model of seed r re-scoring them); the per-seed
difference d_r is the effect of replicate r. :func:`replicate_effect` estimates the effect as the
mean of d_r with a 95 % Student-t interval and tests it with a paired t-test over replicates
(R - 1 degrees of freedom). This is the unit that carries the noise an attack's effect must beat:
retraining with another seed, or another random perturbation of the same size, moves a category's
exposure by itself; a test over users of one model pair would call that noise significant (see
docs/report.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from advrec_common.errors import InvalidInput

CONFIDENCE = 0.95


def replicate_effect(before: Sequence[float] | np.ndarray, after: Sequence[float] | np.ndarray,
                     confidence: float = CONFIDENCE) -> dict[str, Any]:
    """before, after: (R,) a metric per replicate -> mean before/after, effect = mean(after - before),
    its ``confidence`` interval (Student t, R - 1 df), the paired t-test's p-value and R.

    R = 1: the effect without interval or test (None). Every difference equal: the interval has zero
    width and p = 1 when they are all 0, else 0 (no noise at all to attribute the change to).
    """
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    if b.ndim != 1 or b.shape != a.shape or b.size == 0:
        raise InvalidInput(f"before and after must be equal-length 1-d per-replicate values, got {b.shape}, {a.shape}")
    if not (np.isfinite(b).all() and np.isfinite(a).all()):
        raise InvalidInput("per-replicate values contain NaN or infinite values")
    d = a - b
    r = int(d.size)
    out: dict[str, Any] = {"before": float(b.mean()), "after": float(a.mean()), "effect": float(d.mean()),
                           "ci_low": None, "ci_high": None, "p_value": None, "n_replicates": r,
                           "sd": float(d.std(ddof=1)) if r > 1 else None}
    if r < 2:
        return out
    sd = float(d.std(ddof=1))
    if sd == 0.0 or not math.isfinite(sd):
        out.update(ci_low=float(d.mean()), ci_high=float(d.mean()), p_value=1.0 if not d.any() else 0.0)
        return out
    half = float(stats.t.ppf(0.5 + confidence / 2, df=r - 1)) * sd / math.sqrt(r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    out.update(ci_low=float(d.mean() - half), ci_high=float(d.mean() + half), p_value=p)
    return out


def user_effect_interval(diff: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """95 % Student-t interval of the mean of per-user differences (U,) (None for fewer than 2 users)."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size < 2:
        return None, None
    half = float(stats.t.ppf(0.5 + confidence / 2, df=d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)
