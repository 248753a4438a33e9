"""Effects across replicates, proved on hand-made cases and calibrated on simulated noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from advrec_common.errors import InvalidInput
from services.recommender.metrics.effects import replicate_effect, user_effect_interval


def test_hand_made_effect_interval_and_test():
    # d = [1, 2, 3]: mean 2, sd 1, t = 2 / (1/sqrt 3) = 3.464 with 2 df
    out = replicate_effect([10, 10, 10], [11, 12, 13])
    assert out["effect"] == 2.0 and out["before"] == 10.0 and out["after"] == 12.0 and out["n_replicates"] == 3
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)  # 4.303 / 1.732 = 2.484
    assert out["ci_low"] == pytest.approx(2 - half) and out["ci_high"] == pytest.approx(2 + half)
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), 2))  # 0.0742
    assert out["p_value"] == pytest.approx(0.0742, abs=1e-4)


def test_degenerate_cases():
    one = replicate_effect([1.0], [2.0])
    assert one["effect"] == 1.0 and one["p_value"] is None and one["ci_low"] is None  # R = 1: no test
    same = replicate_effect([1, 2, 3], [1, 2, 3])
    assert same["effect"] == 0 and same["p_value"] == 1.0  # nothing changed in any replicate
    # every replicate moved by the same step (ties are common on small catalogs): no variance for a t-test,
    # so the exact sign-flip test answers: all 3 signs equal has probability 2/8 under the null
    shift = replicate_effect([1, 2, 3], [2, 3, 4])
    assert shift["effect"] == 1.0 and shift["p_value"] == 0.25 and shift["ci_low"] is None
    assert shift["test"].startswith("exact sign-flip")
    assert replicate_effect([0.1, 0.2], [0.0995, 0.1995])["p_value"] == pytest.approx(0.5)  # R = 2
    assert replicate_effect([0] * 5, [1] * 5)["p_value"] == 0.0625  # R = 5: the smallest such p
    # float32 metric values: the same count step (1/6000) with ~1e-8 noise (seen in a demo placebo cell,
    # where the t-test said p = 7e-10): a tie, p = 2/2^3
    b = np.array([0.0838336, 0.0841667, 0.0835001])
    noisy = b + np.array([0.000166662, 0.000166669, 0.000166677])
    assert replicate_effect(b, noisy)["p_value"] == 0.25
    # the same step computed from other floats differs in the last bits: still a tie, not p ~ 0
    d = np.array([0.2033, 0.3169, 0.2628]) - (np.array([0.2033, 0.3169, 0.2628]) - 2 / 1200)
    assert np.ptp(d) > 0 and replicate_effect(np.zeros(3), d)["p_value"] == 0.25
    with pytest.raises(InvalidInput):
        replicate_effect([1, 2], [1, float("nan")])
    with pytest.raises(InvalidInput):
        replicate_effect([1, 2], [1])


def test_false_positive_rate_under_training_noise_is_alpha():
    """Null: before and after are independent trainings with the same expected metric. At alpha 0.05
    the replicate test must say 'significant' about 5 % of the time (R = 3 and R = 5)."""
    rng = np.random.default_rng(0)
    for r in (3, 5):
        hits = 0
        n = 2000  # binomial sd 0.005: the band is 3 sd wide on each side
        for _ in range(n):
            before = 0.08 + rng.normal(0, 0.01, r)
            after = 0.08 + rng.normal(0, 0.01, r)
            hits += replicate_effect(before, after)["p_value"] <= 0.05
        rate = hits / n
        assert 0.035 <= rate <= 0.065, (r, rate)


def test_interval_covers_the_true_effect_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    n = 2000
    for _ in range(n):
        out = replicate_effect(rng.normal(0, 1, 4), 0.5 + rng.normal(0, 1, 4))
        covered += out["ci_low"] <= 0.5 <= out["ci_high"]
    assert 0.935 <= covered / n <= 0.965  # sd 0.005


def test_user_interval():
    lo, hi = user_effect_interval(np.array([0.0, 1.0, 2.0]))
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert lo == pytest.approx(1 - half) and hi == pytest.approx(1 + half)
    assert user_effect_interval(np.array([1.0])) == (None, None)


def test_item_effect_is_the_sum_tested_over_items():
    from services.recommender.metrics.effects import item_effect, sign_flip_test

    d = np.array([0.01, 0.02, 0.0, 0.015, 0.03, -0.005, 0.012, 0.02])
    out = item_effect(d)
    assert out["effect"] == pytest.approx(d.sum()) and out["n_items"] == 8
    t = sign_flip_test(d)
    assert out["p_value"] == t["p_value"]
    assert out["ci_low"] == pytest.approx(8 * t["ci_low"]) and out["ci_high"] == pytest.approx(8 * t["ci_high"])
    # by hand: 2^8 sign patterns; |sum| >= observed only for the all-plus/all-minus and near ones
    signs = np.array([[1 if (m >> j) & 1 else -1 for j in range(8)] for m in range(256)])
    assert t["p_value"] == pytest.approx(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12))
    assert item_effect(np.zeros(5))["p_value"] == 1.0


def test_the_sign_flip_test_holds_its_level_on_symmetric_noise():
    from services.recommender.metrics.effects import sign_flip_test

    rng = np.random.default_rng(7)
    for n in (6, 30):  # exact and random patterns
        ps = np.array([sign_flip_test(rng.standard_t(3, size=n))["p_value"] for _ in range(400)])
        assert np.mean(ps <= 0.05) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 400)


def test_the_sign_flip_interval_inverts_the_test_so_it_excludes_zero_exactly_when_p_is_below_005():
    """A displayed interval that held 0 beside a 'significant' p (a Student-t interval next to a sign-flip
    test on items with many zeros) read as a contradiction: the interval is now the test's own."""
    from services.recommender.metrics.effects import _sign_flip_p, _sign_flip_sums, sign_flip_test

    # by hand, exact patterns (n = 8): just inside each bound the test of mean = m does not reject, just
    # outside it does
    d = np.array([0.01, 0.02, 0.0, 0.015, 0.03, -0.005, 0.012, 0.02])
    t = sign_flip_test(d)
    dots, counts, exact = _sign_flip_sums(d, 0)
    assert exact and t["ci_low"] < d.mean() < t["ci_high"]
    tol = 1e-6 * 0.03
    for bound, outward in ((t["ci_low"], -1), (t["ci_high"], 1)):
        assert _sign_flip_p(dots, counts, exact, d.sum(), 8, bound - outward * 1e-6, tol) > 0.05
        assert _sign_flip_p(dots, counts, exact, d.sum(), 8, bound + outward * 1e-6, tol) <= 0.05
    assert 0 < t["ci_low"] and t["p_value"] <= 0.05  # 7 of 8 positive: significant, and the interval says so
    # items as in deployment: most unchanged, a few moved a lot, skewed; exact and random patterns
    rng = np.random.default_rng(3)
    for _ in range(60):
        n = int(rng.integers(6, 70))
        x = rng.standard_t(3, size=n) * (rng.random(n) < 0.3) + rng.normal(0.3 * rng.random(), 0.1, n) * (
            rng.random(n) < 0.2)
        r = sign_flip_test(x)
        assert r["ci_low"] <= x.mean() <= r["ci_high"]
        assert (r["ci_low"] <= 0 <= r["ci_high"]) == (r["p_value"] > 0.05), (n, r)
    # too few units to reach 5 % (2 / 2^5 = 0.0625): a p-value, no interval
    small = sign_flip_test([0.1, 0.2, 0.3, 0.4, 0.5])
    assert small["p_value"] == pytest.approx(0.0625) and small["ci_low"] is None and small["ci_high"] is None


def test_the_cached_sign_patterns_are_the_drawn_ones_and_the_cache_is_bounded(monkeypatch):
    """The patterns depend on (n, seed) only and are kept for the next test: a cached call gives the same
    patterns (hence the same p and interval) as a fresh draw, another seed other patterns, and the cache
    never holds more than its byte bound."""
    from services.recommender.metrics import effects

    monkeypatch.setattr(effects, "_pattern_cache", type(effects._pattern_cache)())
    d = np.random.default_rng(5).normal(0.002, 0.01, size=40)
    first = effects.sign_flip_test(d, seed=3)
    fresh = np.random.default_rng(3).integers(0, 2, size=(10_000, 40)) * 2 - 1  # the first chunk's draw
    signs, counts = effects._sign_patterns(40, 3)  # from the cache now
    assert (3 in {k[1] for k in effects._pattern_cache}) and signs.shape == (effects.SIGN_FLIP_DRAWS, 40)
    assert np.array_equal(signs[:10_000], fresh[:10_000]) and np.array_equal(counts, signs.sum(1))
    assert effects.sign_flip_test(d, seed=3) == first
    assert not np.array_equal(effects._sign_patterns(40, 4)[0][:100], signs[:100])
    monkeypatch.setattr(effects, "SIGN_PATTERN_CACHE_BYTES", 3 * effects.SIGN_FLIP_DRAWS * 40)
    for seed in range(5):
        effects._sign_patterns(40, seed)
    assert sum(s.nbytes for s, _ in effects._pattern_cache.values()) <= effects.SIGN_PATTERN_CACHE_BYTES
    assert list(effects._pattern_cache)[-1] == (40, 4)
