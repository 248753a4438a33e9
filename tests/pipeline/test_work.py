"""Progress in work units: step estimates scale with the work, and the ETA does not swing by orders of
magnitude when steps differ a thousandfold (unlike an ETA that counts steps)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from advrec.pipeline.dag import plan
from advrec.pipeline.spec import load_spec
from advrec.pipeline.work import EtaModel, Facts, attack_iterations, estimate, format_seconds, image_ms


def _step(kind, name, **params):
    return SimpleNamespace(kind=kind, name=name, params=params)


FACTS = Facts(n_items=600, n_users=600, n_train=10_000, extractors={"std": ("resnet50", 224), "demo": ("tiny_cnn", 64)})


def test_estimates_scale_with_images_iterations_backbone_and_epochs():
    shard = _step("attack_shard", "attack/std/pgd/eps8/shard0", method="pgd", eps=8, steps=10, items=[0, 256])
    small = _step("attack_shard", "attack/demo/pgd/eps8/shard0", method="pgd", eps=8, steps=10, items=[0, 256])
    fgsm = _step("attack_shard", "attack/std/fgsm/eps8/shard0", method="fgsm", eps=8, items=[0, 256])
    scenario = _step("scenario", "scenario")
    big = estimate(shard, FACTS)
    assert big.unit == "images" and big.count == 26  # 256 items / 10 categories before the scenario is known
    assert big.units > 500 * estimate(scenario, FACTS).units  # a minute or more vs a tenth of a second
    assert big.units > 20 * estimate(small, FACTS).units  # ResNet-50 at 224 px vs a tiny CNN at 64 px
    assert big.units > 2.5 * estimate(fgsm, FACTS).units  # 10 iterations vs 1 (+ the same measurements)
    # once the scenario is known, the origin items of each slice are counted exactly
    exact = Facts(**{**FACTS.__dict__, "origin_items": {(0, 256): 52}})
    assert estimate(shard, exact).count == 52 and estimate(shard, exact).units == pytest.approx(2 * big.units, rel=0.05)
    train = _step("train", "train/std/vbpr", recommender="vbpr", config={"epochs": 40})
    assert estimate(train, FACTS).unit == "epochs" and estimate(train, FACTS).count == 40
    assert estimate(_step("features", "features/std"), FACTS).count == 600
    assert attack_iterations({"method": "cw", "eps": 0, "norm": "l2", "params": {"cw_steps": 100, "cw_binary_steps": 2}}) == 200
    assert attack_iterations({"method": "pgd", "eps": 8}) == 10 and attack_iterations({"method": "fgsm", "eps": 8}) == 1
    assert attack_iterations({"method": "square", "eps": 8, "params": {"queries": 300}}) == 100
    assert image_ms("resnet50", 448) == pytest.approx(4 * image_ms("resnet50", None))  # cost grows with pixels


def test_every_step_of_the_demo_plan_has_an_estimate():
    spec = load_spec("demo")
    facts = Facts(n_items=600, n_users=600, n_train=10_000, extractors={e.name: ("tiny_cnn", 64) for e in spec.extractors},
                  demo_images={e.name: 400 for e in spec.extractors})
    works = {s.name: estimate(s, facts) for s in plan(spec, 600)}
    assert all(w.units > 0 for w in works.values())
    # the study's expensive steps dominate, the glue steps do not
    total = sum(w.units for w in works.values())
    glue = sum(w.units for n, w in works.items() if n.startswith(("scenario", "adversarial", "dataset")))
    assert glue < 0.02 * total


def _simulate(steps, true_rate, prior=1e-3):
    """Run ``steps`` [(name, kind, units)] taking units * true_rate[kind] seconds each; yield
    (true remaining, work ETA, step-count ETA) after every step."""
    eta = EtaModel(prior)
    for name, kind, units in steps:
        eta.add(name, kind, units)
    durations = [units * true_rate[kind] for _, kind, units in steps]
    elapsed = 0.0
    for i, (name, _kind, _) in enumerate(steps):
        elapsed += durations[i]
        eta.finish(name, durations[i])
        remaining = sum(durations[i + 1:])
        by_steps = elapsed / (i + 1) * (len(steps) - i - 1)  # what a per-step bar extrapolates
        yield remaining, eta.remaining_seconds(), by_steps


def test_eta_does_not_swing_by_orders_of_magnitude_when_steps_differ_a_thousandfold():
    # 40 glue steps of ~1 unit, then 6 attack shards of ~2000 units, then 20 fits of ~200 units; the
    # estimates are off by a constant factor per kind (x3 for attacks, /2 for fits), as real priors are
    steps = ([(f"glue{i}", "scenario", 1.0) for i in range(40)]
             + [(f"attack{i}", "attack_shard", 2000.0) for i in range(6)]
             + [(f"fit{i}", "train", 200.0) for i in range(20)])
    true_rate = {"scenario": 1e-3, "attack_shard": 3e-3, "train": 0.5e-3}
    ratios_work, ratios_steps = [], []
    for remaining, work_eta, step_eta in _simulate(steps, true_rate):
        if remaining > 1.0:
            ratios_work.append(work_eta / remaining)
            ratios_steps.append(step_eta / remaining)
    # counting steps: after the glue steps it predicts ~1000x too little, later far too much
    assert min(ratios_steps) < 0.01 and max(ratios_steps) > 1.5
    # counting work: within one order of magnitude throughout (the worst: the fits, priced at the attacks'
    # measured rate until the first fit ran, x6), and exact once each kind has run once
    assert 0.1 < min(ratios_work) and max(ratios_work) < 10
    assert ratios_work[-1] == pytest.approx(1.0)


def test_inner_progress_and_refined_estimates_move_the_bar():
    eta = EtaModel(prior_seconds_per_unit=0.01)
    eta.add("a", "attack_shard", 100)
    eta.add("b", "train", 100)
    eta.advance("a", 0.5)
    assert eta.done == 50 and eta.remaining_seconds() == pytest.approx(1.5)
    eta.set_units("b", 300)  # e.g. the scenario revealed more origin items
    assert eta.total == 400
    eta.finish("a", 2.0)  # 0.02 s/unit measured for attacks; fits borrow it until one ran
    assert eta.remaining_seconds() == pytest.approx(6.0)
    eta.finish("b", None)  # reused from the store: nothing learnt, nothing left
    assert eta.remaining_seconds() == 0 and format_seconds(3725) == "1h02m" and format_seconds(65) == "1m05s"


def test_wall_eta_divides_by_the_measured_concurrency():
    from advrec.pipeline.work import wall_eta

    # two steps at once: 120 step-seconds finished in 60 s of wall -> 100 step-seconds left take 50 s
    assert wall_eta(100.0, busy_seconds=120.0, wall_seconds=60.0) == 50.0
    # sequential: start-up and bookkeeping make busy < wall; the ETA is never stretched
    assert wall_eta(100.0, busy_seconds=50.0, wall_seconds=60.0) == 100.0
    assert wall_eta(100.0, busy_seconds=0.0, wall_seconds=0.0) == 100.0  # nothing finished yet
