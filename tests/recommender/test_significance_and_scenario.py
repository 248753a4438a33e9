"""Paired tests, BH correction and the origin/target proposal, on hand-made numbers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from advrec_common.errors import InvalidInput
from services.recommender.metrics.significance import benjamini_hochberg, mark, paired_tests
from services.recommender.scenario import propose_scenario


def test_paired_t_by_hand():
    out = paired_tests(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 3.0, 4.0, 6.0]))
    # differences 1,1,1,2: mean 1.25, sd 0.5 -> t = 1.25 / (0.5 / 2) = 5
    assert out["t_stat"] == pytest.approx(5.0)
    assert out["t_pvalue"] == pytest.approx(2 * stats.t.sf(5.0, df=3))
    assert out["diff"] == pytest.approx(1.25) and out["n"] == 4
    assert 0 < out["wilcoxon_pvalue"] <= 1


def test_identical_vectors_give_p_one_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = paired_tests(np.zeros(10), np.zeros(10))
    assert out["t_pvalue"] == 1.0 and out["wilcoxon_pvalue"] == 1.0 and out["t_stat"] == 0.0


def test_constant_shift_is_significant():
    out = paired_tests(np.arange(6.0), np.arange(6.0) + 1)
    assert out["t_pvalue"] == 0.0 and out["t_stat"] == np.inf
    assert mark(out["t_pvalue"]) == "*" and mark(0.2) == ""


def test_paired_tests_reject_bad_input():
    with pytest.raises(InvalidInput):
        paired_tests(np.zeros(3), np.zeros(4))
    with pytest.raises(InvalidInput):
        paired_tests(np.array([1.0, np.nan]), np.zeros(2))
    with pytest.raises(InvalidInput):
        paired_tests(np.zeros(1), np.zeros(1))


def test_benjamini_hochberg_by_hand():
    adj = benjamini_hochberg([0.01, 0.04, 0.03, 0.20])
    assert np.allclose(adj, [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    with pytest.raises(InvalidInput):
        benjamini_hochberg([1.5])


def test_scenario_picks_low_exposure_origin_with_enough_items():
    # items: cat0 = 0..5 (6 items), cat1 = 6..7 (2 items), cat2 = 8..13 (6 items)
    cats = torch.tensor([0] * 6 + [1] * 2 + [2] * 6)
    top = torch.tensor([[8, 9, 0], [10, 1, 2], [11, 12, 3]])  # cat2: 5, cat0: 4, cat1: 0
    out = propose_scenario(top, cats, ["a", "b", "c"], k=3, min_items=5)
    assert [row["name"] for row in out["table"]] == ["c", "a", "b"]
    assert out["origin"]["name"] == "a"  # b is less exposed but has only 2 items
    assert out["target"]["name"] == "c" and out["target"]["chr"] == pytest.approx(5 / 3)
    low = propose_scenario(top, cats, ["a", "b", "c"], k=3, min_items=2)
    assert low["origin"]["name"] == "b" and low["target"]["name"] == "c"
    with pytest.raises(InvalidInput):
        propose_scenario(top, cats, ["a", "b", "c"], k=3, min_items=50)


def test_scenario_warnings_on_hand_made_rankings():
    from services.recommender.scenario import scenario_warnings

    # the own-catalog probe: 27 of 30 items in one ImageNet class, the only one with >= 5 items
    table = [{"name": "velvet", "chr": 18.0, "n_items": 27}, {"name": "chain mail", "chr": 0.76, "n_items": 1},
             {"name": "poncho", "chr": 0.68, "n_items": 2}]
    w = scenario_warnings(table, "velvet", "chain mail", 20, automatic_origin=True, min_items=5)
    assert len(w) == 3
    assert w[0].startswith("only 'velvet' has at least 5 items")
    assert "already at least as exposed as the target 'chain mail'" in w[1] and "18 vs 0.76" in w[1]
    assert "holds 27 of the catalog's 30 items (90%)" in w[2]
    # a named origin is not "the only candidate"; a balanced, well-posed scenario has no warning
    assert len(scenario_warnings(table, "velvet", "chain mail", 20, automatic_origin=False, min_items=5)) == 2
    named = scenario_warnings(table, "velvet", "chain mail", 20, automatic_origin=False, min_items=5,
                              automatic_target=False)
    assert all("scenario.csv" in w and "name scenario.origin" not in w for w in named)  # the user named both
    balanced = [{"name": "c", "chr": 5.0, "n_items": 6}, {"name": "a", "chr": 4.0, "n_items": 6},
                {"name": "b", "chr": 0.0, "n_items": 6}]
    assert scenario_warnings(balanced, "b", "c", 3, automatic_origin=True, min_items=5) == []
    assert scenario_warnings(balanced, "nope", "c", 3, automatic_origin=True, min_items=5) == []


def test_candidate_pairs_are_the_least_x_most_exposed_categories():
    from services.recommender.scenario import candidate_pairs

    table = [{"id": i, "name": n, "chr": c, "n_items": m} for i, (n, c, m) in enumerate(
        [("a", 9.0, 10), ("b", 7.0, 10), ("c", 5.0, 10), ("d", 2.0, 10), ("e", 1.0, 3), ("f", 0.5, 10)])]
    pairs = candidate_pairs(table, origin=None, target=None, min_items=5, n=2)
    assert pairs == [("f", "a"), ("f", "b"), ("d", "a"), ("d", "b")]  # e has too few items to be an origin
    assert candidate_pairs(table, origin="c", target=None, min_items=5, n=2) == [("c", "a"), ("c", "b")]
    assert candidate_pairs(table, origin=None, target="b", min_items=5, n=2) == [("f", "b"), ("d", "b")]
    assert candidate_pairs(table, origin="d", target="a", min_items=5, n=3) == [("d", "a")]
    two = table[:2]  # the two rank each other: only the upward pair is asked
    assert candidate_pairs(two, origin=None, target=None, min_items=5, n=3) == [("b", "a")]
    tied = [{"id": 0, "name": "x", "chr": 1.0, "n_items": 9}, {"id": 1, "name": "y", "chr": 1.0, "n_items": 9}]
    assert candidate_pairs(tied, origin=None, target=None, min_items=5, n=3) == [("x", "y")]  # no upward pair
    assert candidate_pairs(table, origin="a", target="f", min_items=5, n=2) == [("a", "f")]  # named: as asked


def test_choose_pair_keeps_the_largest_real_rise_and_corrects_for_the_choice():
    """A pair's rise is real when positive with p x n (Bonferroni: the choice looks at all n pairs) <= alpha;
    the largest real rise is chosen, else the largest rise of all, flagged infeasible."""
    from services.recommender.scenario import choose_pair

    rows = [{"origin": "o1", "target": "t1", "effect": 0.01, "p_value": 0.001},
            {"origin": "o1", "target": "t2", "effect": 0.05, "p_value": 0.004},
            {"origin": "o2", "target": "t1", "effect": -0.02, "p_value": 0.0001}]
    best = choose_pair(rows)
    assert (best["origin"], best["target"], best["n_pairs"]) == ("o1", "t2", 3)
    assert best["p_adjusted"] == pytest.approx(0.012) and best["feasible"]
    rows[1]["p_value"] = 0.02  # 0.06 after the correction: the smaller rise is the real one
    best = choose_pair(rows)
    assert (best["target"], best["feasible"]) == ("t1", True) and best["p_adjusted"] == pytest.approx(0.003)
    rows[0]["p_value"] = 0.5  # no real rise: the largest rise, flagged
    best = choose_pair(rows)
    assert (best["target"], best["feasible"]) == ("t2", False)
    falls = [{"origin": "o", "target": "t", "effect": -0.01, "p_value": 1e-6}]
    assert not choose_pair(falls)["feasible"]  # a significant fall is not a possible rise
    untested = [{"origin": "o", "target": "t", "effect": 0.3, "p_value": None}]
    assert choose_pair(untested)["feasible"] is False and choose_pair(untested)["p_adjusted"] is None
