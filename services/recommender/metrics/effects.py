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
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from advrec_common.errors import InvalidInput

CONFIDENCE = 0.95
TIE_RTOL = 1e-6  # replicate differences closer than this (relative to the metric's values) are tied


def replicate_effect(before: Sequence[float] | np.ndarray, after: Sequence[float] | np.ndarray,
                     confidence: float = CONFIDENCE) -> dict[str, Any]:
    """before, after: (R,) a metric per replicate -> mean before/after, effect = mean(after - before),
    its ``confidence`` interval (Student t, R - 1 df), the paired t-test's p-value and R.

    R = 1: the effect without interval or test (None). Every difference equal (metrics on a small
    catalog move in steps of 1/(K*users), so R replicates can tie): p = 1 when they are all 0;
    otherwise the t-test has no variance to work with (it would say p = 0), so the exact sign-flip
    test answers, p = 2 / 2^R (0.5 at R = 2, 0.25 at R = 3, 0.0625 at R = 5), and there is no interval.
    ``test`` names the test that gave the p-value.
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
    # ties up to float rounding: the same count step computed from other values differs in the last bits
    # (1e-6 of the metric's scale: far below one step of a count metric, far above float32 noise)
    tol = TIE_RTOL * max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-12)
    if not math.isfinite(sd) or float(np.ptp(d)) <= tol:
        if float(np.abs(d).max()) <= tol:
            out.update(ci_low=0.0, ci_high=0.0, p_value=1.0, test="none (no replicate changed)")
        else:  # under the null each d_r is as likely negative as positive: all R signs equal has prob. 2/2^R
            out.update(p_value=min(1.0, 2.0 * 0.5**r), test="exact sign-flip (every replicate's difference equal)")
        return out
    half = float(stats.t.ppf(0.5 + confidence / 2, df=r - 1)) * sd / math.sqrt(r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    out.update(ci_low=float(d.mean() - half), ci_high=float(d.mean() + half), p_value=p, test="paired t across replicates")
    return out


def user_effect_interval(diff: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """95 % Student-t interval of the mean of per-user differences (U,) (None for fewer than 2 users)."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size < 2:
        return None, None
    half = float(stats.t.ppf(0.5 + confidence / 2, df=d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


EXACT_SIGN_FLIP_MAX = 16  # up to 2^16 sign patterns are enumerated; above, seeded random ones
SIGN_FLIP_DRAWS = 99_999


SIGN_PATTERN_CACHE_BYTES = 96 * 2**20  # the patterns of the last few (n, seed), kept for the next test
_CHUNK = 10_000
_pattern_cache: OrderedDict[tuple[int, int | None], tuple[np.ndarray, np.ndarray]] = OrderedDict()
_pattern_lock = threading.Lock()


def _sign_patterns(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sign patterns of :func:`sign_flip_test` for ``n`` units, as int8 (patterns, n) of +-1, and their sums.

    Every pattern for n <= :data:`EXACT_SIGN_FLIP_MAX`, else :data:`SIGN_FLIP_DRAWS` drawn from ``seed`` in
    chunks of 10,000. They depend on (n, seed) only, not on the data, so the last few are cached (at most
    :data:`SIGN_PATTERN_CACHE_BYTES`): a run tests hundreds of cells over the same items."""
    key = (n, None if n <= EXACT_SIGN_FLIP_MAX else seed)
    with _pattern_lock:
        hit = _pattern_cache.get(key)
        if hit is not None:
            _pattern_cache.move_to_end(key)
            return hit
    if n <= EXACT_SIGN_FLIP_MAX:
        signs = (1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)).astype(np.int8)
    else:
        rng = np.random.default_rng(seed)
        signs = np.concatenate([(rng.integers(0, 2, size=(min(_CHUNK, SIGN_FLIP_DRAWS - start), n)) * 2 - 1)
                                .astype(np.int8) for start in range(0, SIGN_FLIP_DRAWS, _CHUNK)])
    entry = (signs, signs.sum(1, dtype=np.int64).astype(np.float64))
    if signs.nbytes <= SIGN_PATTERN_CACHE_BYTES:
        with _pattern_lock:
            _pattern_cache[key] = entry
            while sum(s.nbytes for s, _ in _pattern_cache.values()) > SIGN_PATTERN_CACHE_BYTES:
                _pattern_cache.popitem(last=False)
    return entry


def _sign_flip_sums(d: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per sign pattern s: (s . d, s . 1), over every pattern (exact, n <= :data:`EXACT_SIGN_FLIP_MAX`) or
    :data:`SIGN_FLIP_DRAWS` seeded random ones; and whether the patterns are exhaustive."""
    n = int(d.size)
    signs, counts = _sign_patterns(n, seed)
    dots = np.concatenate([signs[start:start + _CHUNK].astype(np.float64) @ d
                           for start in range(0, signs.shape[0], _CHUNK)])
    return dots, counts, n <= EXACT_SIGN_FLIP_MAX


def _sign_flip_p(dots: np.ndarray, counts: np.ndarray, exact: bool, total: float, n: int, shift: float,
                 tol: float) -> float:
    """The sign-flip p-value of mean(d) = ``shift``: the patterns' sums of d - shift against the observed one."""
    observed = abs(total - shift * n)
    hits = int(np.sum(np.abs(dots - shift * counts) >= observed - tol * n))
    return min(1.0, hits / dots.size if exact else (1 + hits) / (1 + dots.size))


def sign_flip_test(diffs: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    """A one-sample test of mean(diffs) = 0 over independent units (e.g. promoted items, each one's difference
    between the attack's change and its placebo's): the sign-flip permutation test, exact for up to
    :data:`EXACT_SIGN_FLIP_MAX` units (every pattern), else :data:`SIGN_FLIP_DRAWS` seeded random patterns
    (p = (1 + hits) / (1 + draws), never 0). Under the null each difference is symmetric about 0, so the test
    holds its level whatever their distribution (no normality, ties allowed). Two-sided.

    With the effect (mean), ``n``, ``n_positive`` and the ``confidence`` interval *of the same test*: the
    shifts m that the sign-flip test of mean = m does not reject at 1 - ``confidence`` (same patterns,
    bisection to 1e-9 of the data's range), so the interval excludes 0 exactly when p <= 1 - confidence.
    None when even the most extreme pattern cannot reach that level (2 / 2^n > 1 - confidence: n < 6)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise InvalidInput(f"diffs must be a non-empty 1-d array, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise InvalidInput("diffs contain NaN or infinite values")
    n = int(d.size)
    out: dict[str, Any] = {"effect": float(d.mean()), "ci_low": None, "ci_high": None, "p_value": None, "n": n,
                           "n_positive": int((d > 0).sum()), "n_negative": int((d < 0).sum())}
    if n < 2:
        return out
    tol = TIE_RTOL * max(float(np.abs(d).max()), 1e-12)
    if float(np.abs(d).max()) <= 1e-12:
        out.update(ci_low=0.0, ci_high=0.0, p_value=1.0, test="none (no unit changed)")
        return out
    dots, counts, exact = _sign_flip_sums(d, seed)
    total = float(d.sum())
    p = _sign_flip_p(dots, counts, exact, total, n, 0.0, tol)
    out.update(p_value=p, test="exact sign-flip over units" if exact
               else f"sign-flip over units ({SIGN_FLIP_DRAWS} random patterns)")
    alpha = 1.0 - confidence
    low, high, mean = float(d.min()), float(d.max()), float(d.mean())
    span = max(high - low, tol)
    outside = (low - span, high + span)  # every d - m of one sign there: only the extreme patterns reach it
    if any(_sign_flip_p(dots, counts, exact, total, n, m, tol) > alpha for m in outside):
        return out  # too few units for an interval at this level

    def bound(rejected: float) -> float:
        inside = mean  # p(mean) = 1: never rejected
        while abs(rejected - inside) > 1e-9 * span:
            mid = 0.5 * (rejected + inside)
            if _sign_flip_p(dots, counts, exact, total, n, mid, tol) > alpha:
                inside = mid
            else:
                rejected = mid
        return inside

    out.update(ci_low=bound(outside[0]), ci_high=bound(outside[1]))
    return out


def item_effect(item_deltas: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """A category's change as the sum of its items' changes (N,) (each averaged over the replicates), tested
    over the items: the sign-flip test of their mean (:func:`sign_flip_test`), with the interval of the sum
    (N x the mean's interval from inverting that test: it excludes 0 exactly when p <= 0.05).

    The unit of deployment: the deployed models are fixed and each item's scores depend on its own features,
    so the items a perturbation moved are the independent units of its effect on these models (retrain
    retrains the models: there the replicates are, :func:`replicate_effect`)."""
    d = np.asarray(item_deltas, dtype=np.float64)
    t = sign_flip_test(d, confidence)
    n = int(d.size)
    scale = lambda v: None if v is None else float(v) * n  # noqa: E731
    return {"effect": float(d.sum()), "ci_low": scale(t["ci_low"]), "ci_high": scale(t["ci_high"]),
            "p_value": t["p_value"], "test": f"items: {t.get('test', 'none')} ({n} items; deployment, the models fixed)",
            "n_items": n, "n_items_positive": t["n_positive"], "n_items_negative": t["n_negative"]}
