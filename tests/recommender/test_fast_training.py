"""Hand-written gradients, row-sparse Adagrad, batched replicates and the one-pass evaluation agree with
their references; the study preset holds the study's numbers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from services.recommender import optim, training
from services.recommender.config import RecConfig
from services.recommender.metrics.accuracy import (
    evaluate_accuracy,
    leave_one_out_ranks,
    precision_recall,
    rank_and_evaluate,
)
from services.recommender.models import RECOMMENDERS, build_recommender
from services.recommender.pairs import PairIndex, last_per_user, pair_index
from services.recommender.replicates import batched, fit_replicates
from services.recommender.sampling import BPRSampler, stack_batch
from services.recommender.scoring import topk

HAND = [("bprmf", {}), ("vbpr", {}), ("vbpr", {"full_vbpr": True}), ("amr", {}), ("amr", {"full_vbpr": True}),
        ("deepstyle", {})]


@pytest.mark.parametrize("batch", [16, 512])  # 512 covers the tables: the per-table penalty path
@pytest.mark.parametrize("form", ["l2", "study_sum"])
@pytest.mark.parametrize(("name", "extra"), HAND)
def test_hand_gradients_equal_autograd(name, extra, form, batch, synth):
    n_reg = 2 if name == "bprmf" else 3
    model = build_recommender(name, synth.train.n_users, synth.train.n_items,
                              {"epochs": 4, "patience": 0, "regs": [0.1, 0.01, 0.05][:n_reg], "reg_form": form,
                               "adv_lambda": 0.5, **extra})
    training._setup(model, synth.items, synth.train)
    model.current_epoch = 4  # AMR: inside the adversarial phase
    noise = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=noise) * 0.05)  # biases and E away from their initial values
    gen = torch.Generator().manual_seed(0)
    u, i, j = (a[:batch] for a in BPRSampler(synth.train, batch, False, gen).epoch_arrays())
    model.batch_loss(u, i, j).backward()
    tables = model.train_tables()
    W = {n: getattr(model, n).detach().clone().unsqueeze(0) if kind == "dense" else getattr(model, n).detach().clone()
         for n, (kind, _) in tables.items()}
    G = {n: torch.zeros_like(w) for n, w in W.items()}
    model.bpr_grads(W, G, stack_batch([(u, i, j)], 0, batch, model.n_users, model.n_items, [gen]))
    for n, (kind, _) in tables.items():
        ref, got = getattr(model, n).grad, G[n][0] if kind == "dense" else G[n]
        # float32 sums over the batch in another order: compare relative to the block's scale
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), n


def test_row_sparse_adagrad_is_bitwise_the_dense_update(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(50, 4, generator=gen)
    rows = torch.tensor([3, 7, 7, 20])
    grads = torch.randn(4, 4, generator=gen)

    def run(fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(optim, "DENSE_FRACTION", fraction)
        w = w0.clone()
        opt = optim.RowAdagrad({"w": w}, {"w": 0.1}, {"w"})
        for _ in range(3):
            opt.grad["w"].index_add_(0, rows, grads)
            opt.step({"w": [rows]})
        return w, opt.acc["w"]

    (ws, accs), (wd, accd) = run(10.0), run(0.0)  # sparse path, dense path
    assert torch.equal(ws, wd) and torch.equal(accs, accd)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(ws[untouched], w0[untouched]) and not torch.equal(ws[rows], w0[rows])


@pytest.mark.parametrize(("name", "extra"), [("bprmf", {}), ("vbpr", {}), ("amr", {}), ("deepstyle", {}),
                                             ("bprmf", {"optimizer": "adam", "lr": [0.01]})])
def test_stacked_training_equals_the_autograd_reference(name, extra, synth):
    """Sparse-row updates + hand gradients vs backward() + torch.optim on the whole tables."""
    cfg = {"epochs": 4, "patience": 0, "batch_size": 64, "seed": 1, **extra}
    fast = build_recommender(name, synth.train.n_users, synth.train.n_items, cfg)
    fast.fit(synth.train, synth.items)
    ref = build_recommender(name, synth.train.n_users, synth.train.n_items, cfg)
    training._fit_autograd(ref, synth.train, synth.items, None, None)
    a, b = fast.state_dict(), ref.state_dict()
    atol = 2e-4 if extra else 2e-5  # Adam divides by sqrt(v): rounding-level gradient differences grow
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol), (key, float((a[key] - b[key]).abs().max()))
    assert torch.equal(topk(fast, None, 10, synth.train)[1], topk(ref, None, 10, synth.train)[1])


@pytest.mark.parametrize("name", ["bprmf", "vbpr", "amr", "deepstyle", "acf", "dvbpr"])
def test_replicates_equal_separate_fits(name, synth):
    cfg = {"epochs": 2 if name in ("acf", "dvbpr") else 4, "patience": 0, "batch_size": 64}
    seeds = [3, 4, 5]
    pairs = fit_replicates(name, synth.train.n_users, synth.train.n_items, cfg, seeds, synth.train, synth.items)
    assert batched(name) == (name not in ("acf", "dvbpr"))
    firsts = []
    for seed, (model, report) in zip(seeds, pairs, strict=True):
        alone = build_recommender(name, synth.train.n_users, synth.train.n_items, {**cfg, "seed": seed})
        alone.fit(synth.train, synth.items)
        a, b = model.state_dict(), alone.state_dict()
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
        assert torch.equal(topk(model, None, 20, synth.train)[1], topk(alone, None, 20, synth.train)[1])
        assert model.config.seed == seed and report.epochs_run == cfg["epochs"]
        firsts.append(next(iter(a.values())))
    assert not torch.equal(firsts[0], firsts[1])  # each seed its own initialisation


def test_replicates_stop_early_each_on_its_own(synth):
    cfg = {"epochs": 12, "patience": 1, "batch_size": 64}
    pairs = fit_replicates("vbpr", synth.train.n_users, synth.train.n_items, cfg, [0, 1], synth.train, synth.items)
    for seed, (model, report) in zip([0, 1], pairs, strict=True):
        alone = build_recommender("vbpr", synth.train.n_users, synth.train.n_items, {**cfg, "seed": seed})
        rep = alone.fit(synth.train, synth.items)
        assert (report.best_epoch, report.epochs_run, report.stopped_early) == (rep.best_epoch, rep.epochs_run,
                                                                                rep.stopped_early)
        assert torch.allclose(model.P, alone.P, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["bprmf", "vbpr", "acf"])
def test_one_pass_evaluation_equals_the_three_passes(name, fitted, synth):
    model, train, test = fitted[name], synth.train, synth.test
    ks, max_k = (5, 10), 20
    top, acc = rank_and_evaluate(model, train, test, ks, max_k)
    # the old way: full scores -> ranks; topk -> lists; topk again inside the accuracy
    users_np, items_np = last_per_user(test)
    users, items = torch.from_numpy(users_np), torch.from_numpy(items_np)
    ranks = leave_one_out_ranks(model.score(users), items, PairIndex(train), users)
    _, top_ref = topk(model, None, max_k, exclude=train, batch_size=1024)
    assert torch.equal(top, top_ref)
    assert torch.equal(acc["per_user"]["rank"], ranks) and torch.equal(acc["per_user"]["users"], users)
    for k in ks:
        p_ref, r_ref = precision_recall(top_ref[users], test, k, users)
        assert torch.equal(acc["per_user"][f"precision@{k}"].nan_to_num(-1), p_ref.nan_to_num(-1))
        assert torch.equal(acc["per_user"][f"recall@{k}"].nan_to_num(-1), r_ref.nan_to_num(-1))
        assert acc[f"hr@{k}"] == float((ranks < k).float().mean())
    old = evaluate_accuracy(model, train, test, ks)
    assert {k: v for k, v in old.items() if k != "per_user"} == {k: v for k, v in acc.items() if k != "per_user"}


def test_sampled_validation_estimates_the_exact_auc(fitted, synth):
    from services.recommender.pairs import split_last

    fit_train, valid = split_last(synth.train)
    model = fitted["vbpr"]
    exact = training.Validator(fit_train, valid, RecConfig(val_negatives=0), model.device)(model)
    sampled = training.Validator(fit_train, valid, RecConfig(val_negatives=80), model.device)(model)
    assert exact != sampled and abs(exact - sampled) < 0.05


def test_pair_index_is_cached_and_bitset_agrees_with_search(synth, monkeypatch):
    from services.recommender import pairs

    assert pair_index(synth.train) is pair_index(synth.train)
    users = torch.randint(0, synth.train.n_users, (500,))
    items = torch.randint(0, synth.train.n_items, (500,))
    with_bits = PairIndex(synth.train)
    monkeypatch.setattr(pairs, "MAX_BITSET_BITS", 0)
    searched = PairIndex(synth.train)
    assert with_bits._bits is not None and searched._bits is None
    assert torch.equal(with_bits.contains(users, items), searched.contains(users, items))
    u, i = torch.from_numpy(synth.train.user[:50]), torch.from_numpy(synth.train.item[:50])
    assert bool(with_bits.contains(u, i).all())


def test_study_preset_is_the_study(synth):
    def resolved(name: str, **kw) -> RecConfig:
        return RECOMMENDERS[name](synth.train.n_users, synth.train.n_items, {"preset": "study", **kw}).config

    for name in ("vbpr", "amr"):
        c = resolved(name)
        assert (c.optimizer, c.lr, c.regs, c.reg_form) == ("adagrad", [0.01, 1e-4, 1e-3], [0.1, 0.001, 0.0], "study_sum")
        assert (c.batch_size, c.drop_last, c.epochs, c.patience, c.k) == (512, True, 4000, 0, 64)
    amr = resolved("amr")
    assert (amr.adv_lambda, amr.adv_eps, amr.adv_start, amr.adv_type) == (0.1, 1.0, 0.5, "grad")
    acf, dvbpr = resolved("acf"), resolved("dvbpr")
    assert (acf.optimizer, acf.lr, acf.hidden, acf.k, acf.patience) == ("adam", [1e-4], 64, 64, 0)
    assert (dvbpr.optimizer, dvbpr.lr, dvbpr.batch_size, dvbpr.regs, dvbpr.epochs, dvbpr.patience) == (
        "adam", [1e-4], 32, [1.0, 0.001], 20, 0)
    assert resolved("vbpr", reg_form="l2", patience=3).reg_form == "l2"  # explicit values win
    fast = RECOMMENDERS["vbpr"](3, 3).config
    assert (fast.patience, fast.reg_form, fast.batch_size) == (5, "l2", 256)


def test_config_imports_without_torch():
    code = "import sys, services.recommender.config as c; c.RecConfig(preset='study'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_rank_and_evaluate_rejects_bad_requests(fitted, synth):
    from advrec_common.datasets.types import Interactions
    from advrec_common.errors import InvalidInput

    model = fitted["bprmf"]
    with pytest.raises(InvalidInput, match="max_k"):
        rank_and_evaluate(model, synth.train, synth.test, (10,), max_k=synth.train.n_items + 1)
    with pytest.raises(InvalidInput, match="k must be"):
        rank_and_evaluate(model, synth.train, synth.test, (0,))
    other = Interactions(synth.train.user, synth.train.item, synth.train.n_users, synth.train.n_items + 1)
    with pytest.raises(InvalidInput, match="train"):
        rank_and_evaluate(model, other, synth.test, (10,))
    with pytest.raises(InvalidInput, match="seeds"):
        fit_replicates("bprmf", synth.train.n_users, synth.train.n_items, {}, [], synth.train)
