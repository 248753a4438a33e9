"""Negative sampling, reproducibility, early stopping, the validation hold-out and AMR's two phases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.models import build_recommender
from services.recommender.pairs import split_last
from services.recommender.training import BPRSampler


def test_negatives_are_never_positives_nor_cold_items(synth):
    train = synth.train
    cold = 5  # make item 5 cold: no training interaction
    keep = train.item != cold
    train = Interactions(train.user[keep], train.item[keep], train.n_users, train.n_items)
    sampler = BPRSampler(train, batch_size=64, drop_last=False, generator=torch.Generator().manual_seed(0))
    positives = set((train.user * train.n_items + train.item).tolist())
    seen = 0
    for _ in range(3):
        for u, i, j in sampler.epoch():
            assert not positives.intersection((u * train.n_items + j).tolist())
            assert positives.issuperset((u * train.n_items + i).tolist())
            assert not bool((j == cold).any())
            seen += u.numel()
    assert seen == 3 * len(sampler)


def test_sampler_drop_last_and_impossible_users():
    inter = Interactions(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 2]), 2, 4)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(InvalidInput, match="every item"):
        BPRSampler(inter, 2, True, gen)  # user 1 owns all 3 warm items
    ok = Interactions(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 2, 3]), 3, 4)
    sizes = [u.numel() for u, _, _ in BPRSampler(ok, 2, True, gen).epoch()]
    assert sizes == [2, 2]


def test_split_last_holds_out_one_per_user_with_two_or_more():
    inter = Interactions(np.array([0, 0, 0, 1, 2, 2]), np.array([1, 2, 3, 4, 5, 6]), 3, 7,
                         timestamp=np.array([3, 1, 2, 0, 5, 9]))
    rest, held = split_last(inter)
    assert sorted(zip(held.user.tolist(), held.item.tolist(), strict=True)) == [(0, 1), (2, 6)]
    assert len(rest) == 4 and 1 not in rest.user.tolist() or (rest.user == 1).sum() == 1


@pytest.mark.parametrize("name", ["vbpr", "acf", "dvbpr"])
def test_fits_are_bitwise_reproducible_on_cpu(name, synth):
    cfg = {"epochs": 2, "patience": 0, "seed": 7}

    def fit():
        model = build_recommender(name, synth.train.n_users, synth.train.n_items, cfg)
        model.fit(synth.train, synth.items)
        return model.state_dict()

    a, b = fit(), fit()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = build_recommender(name, synth.train.n_users, synth.train.n_items, {**cfg, "seed": 8})
    other.fit(synth.train, synth.items)
    assert not all(torch.equal(a[k], other.state_dict()[k]) for k in a if a[k].is_floating_point())


def test_early_stopping_restores_the_best_epoch_and_reports_progress(synth):
    events = []
    model = build_recommender("vbpr", synth.train.n_users, synth.train.n_items,
                              {"epochs": 30, "patience": 2, "lr": [0.0]})  # lr 0: validation never improves
    report = model.fit(synth.train, synth.items, progress=events.append)
    assert report.stopped_early and report.best_epoch == 1 and report.epochs_run == 3
    assert [e["epoch"] for e in events] == [1, 2, 3]
    assert all(set(e) >= {"epoch", "loss", "val_metric"} and e["val_metric"] is not None for e in events)
    learning = build_recommender("vbpr", synth.train.n_users, synth.train.n_items, {"epochs": 8, "patience": 3})
    rep = learning.fit(synth.train, synth.items)
    vals = [h["val_metric"] for h in rep.history]
    assert rep.best_val == max(vals) and vals[rep.best_epoch - 1] == rep.best_val
    assert rep.triples_per_second > 0 and rep.n_triples > 0


def test_explicit_valid_set_is_used(synth):
    model = build_recommender("bprmf", synth.train.n_users, synth.train.n_items, {"epochs": 3, "patience": 5})
    report = model.fit(synth.train, synth.items, valid=synth.test)
    # with an explicit valid set nothing is held out: every distinct training pair is trained on
    assert report.n_triples == 3 * len(np.unique(synth.train.user * synth.train.n_items + synth.train.item))


def test_amr_is_vbpr_before_its_adversarial_phase(synth):
    cfg = {"epochs": 4, "patience": 0, "seed": 3}
    vbpr = build_recommender("vbpr", synth.train.n_users, synth.train.n_items, cfg)
    vbpr.fit(synth.train, synth.items)
    amr0 = build_recommender("amr", synth.train.n_users, synth.train.n_items, {**cfg, "adv_lambda": 0.0})
    amr0.fit(synth.train, synth.items)
    amr = build_recommender("amr", synth.train.n_users, synth.train.n_items, cfg)
    amr.fit(synth.train, synth.items)
    sv, s0, s1 = vbpr.state_dict(), amr0.state_dict(), amr.state_dict()
    assert all(torch.allclose(sv[k], s0[k], atol=1e-6) for k in sv)  # lambda 0: the same model
    assert not torch.allclose(sv["E"], s1["E"])  # the adversarial term changes training
    amr_es = build_recommender("amr", synth.train.n_users, synth.train.n_items, {"epochs": 6, "patience": 1, "lr": [0.0]})
    assert amr_es.fit(synth.train, synth.items).best_epoch == 4  # first epoch of the adversarial phase


@pytest.mark.parametrize("form", ["l2", "study_sum"])
def test_reg_forms_and_study_preset_resolve(form, synth):
    model = build_recommender("vbpr", synth.train.n_users, synth.train.n_items,
                              {"preset": "study", "epochs": 1, "reg_form": form, "patience": 0})
    assert model.config.lr == [0.01, 1e-4, 1e-3] and model.config.regs == [0.1, 0.001, 0.0]
    assert model.config.batch_size == 512 and model.config.drop_last
    report = model.fit(synth.train, synth.items)
    assert np.isfinite(report.history[0]["loss"])
