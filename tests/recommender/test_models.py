"""Every registered recommender learns, honours the re-scoring contract and round-trips through save/load."""

from __future__ import annotations

import pytest
import torch

from advrec_common.errors import BadCheckpoint, InvalidInput, NotFound
from services.recommender.metrics.accuracy import auc, evaluate_accuracy, leave_one_out_ranks, n_candidates
from services.recommender.models import RECOMMENDERS, Recommender, build_recommender, load_recommender
from services.recommender.pairs import last_per_user
from services.recommender.training import popularity_scores

from .conftest import MODELS


def _popularity_auc(synth) -> float:
    users, items = (torch.from_numpy(a) for a in last_per_user(synth.test))
    pop = torch.from_numpy(popularity_scores(synth.train))
    scores = pop[None].expand(len(users), -1).clone()
    ranks = leave_one_out_ranks(scores, items, synth.train, users)
    return float(auc(ranks, n_candidates(synth.train, users, items, synth.train.n_items)).mean())


def test_registry_is_complete():
    assert set(RECOMMENDERS) == set(MODELS)
    with pytest.raises(NotFound):
        build_recommender("nope", 3, 3)
    with pytest.raises(InvalidInput):
        build_recommender("vbpr", 3, 3, {"epochs": 0})


@pytest.mark.parametrize("name", MODELS)
def test_model_beats_popularity_and_random(name, fitted, synth):
    acc = evaluate_accuracy(fitted[name], synth.train, synth.test, ks=(10,))
    random_hr = 10 / (synth.train.n_items - 7)  # ~7 training items per user
    assert acc["auc"] > _popularity_auc(synth) + 0.1, acc
    assert acc["auc"] > 0.7 and acc["hr@10"] > 2 * random_hr, acc
    assert acc["per_user"]["auc"].shape == (acc["n_users"],)


@pytest.mark.parametrize("name", MODELS)
def test_same_items_same_scores_and_replaced_items_change_them(name, fitted, synth):
    model = fitted[name]
    users = torch.arange(0, synth.train.n_users, 7)
    base = model.score(users)
    assert base.shape == (users.numel(), synth.train.n_items)
    assert torch.equal(model.score(users, synth.items), base)
    gen = torch.Generator().manual_seed(1)
    it = synth.items
    changed = it.replace(
        features=it.features + torch.rand(it.features.shape, generator=gen),
        spatial=it.spatial + torch.randn(it.spatial.shape, generator=gen),
        images=torch.randint(0, 256, it.images.shape, generator=gen, dtype=torch.uint8),
    )
    after = model.score(users, changed)
    if model.needs:
        assert (after - base).abs().max() > 1e-4
    else:
        assert torch.equal(after, base)  # BPR-MF reads no item inputs
    assert torch.equal(model.score(users), base)  # re-scoring did not modify the model


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name, fitted, synth, tmp_path):
    model = fitted[name]
    users = torch.arange(synth.train.n_users)
    model.save(tmp_path / "m")
    loaded = load_recommender(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.dims == model.dims
    assert torch.equal(loaded.score(users), model.score(users))
    if model.needs:
        assert torch.allclose(loaded.score(users, synth.items), model.score(users, synth.items))


def test_replace_items_is_permanent_and_equals_rescoring(synth, tmp_path):
    model = build_recommender("dvbpr", synth.train.n_users, synth.train.n_items, {"epochs": 2, "patience": 0})
    model.fit(synth.train, synth.items)
    users = torch.arange(10)
    flipped = synth.items.replace(images=synth.items.images.flip(-1))
    expected = model.score(users, flipped)
    model.replace_items(flipped)
    assert torch.allclose(model.score(users), expected)
    model.save(tmp_path / "d")
    assert torch.allclose(Recommender.load(tmp_path / "d").score(users), expected)


def test_deepstyle_keeps_fitted_categories_when_omitted(fitted, synth):
    model = fitted["deepstyle"]
    users = torch.arange(4)
    no_cats = synth.items.replace(categories=None)
    assert torch.equal(model.score(users, no_cats), model.score(users))
    too_big = synth.items.replace(categories=torch.full_like(synth.items.categories, synth.n_categories))
    with pytest.raises(InvalidInput, match="category"):
        model.score(users, too_big)


def test_fit_and_load_errors(synth, tmp_path):
    model = build_recommender("vbpr", synth.train.n_users, synth.train.n_items)
    with pytest.raises(InvalidInput, match="not fitted"):
        model.score(torch.tensor([0]))
    with pytest.raises(InvalidInput, match="needs"):
        model.fit(synth.train, None)
    wrong = build_recommender("vbpr", synth.train.n_users + 1, synth.train.n_items)
    with pytest.raises(InvalidInput):
        wrong.fit(synth.train, synth.items)
    with pytest.raises(NotFound):
        load_recommender(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "bad" / "config.json").write_text('{"name": "vbpr"}')
    with pytest.raises(BadCheckpoint):
        load_recommender(tmp_path / "bad")


def test_torch_free_needs_table_matches_the_model_classes():
    from services.recommender.kinds import RECOMMENDER_NEEDS
    from services.recommender.models import RECOMMENDERS

    assert {n: set(v) for n, v in RECOMMENDER_NEEDS.items()} == {n: set(c.needs) for n, c in RECOMMENDERS.items()}


def test_config_blocks_cover_every_model_and_its_presets_fit_them():
    """CONFIG_BLOCKS (torch-free, what the spec checks lr/regs lengths with) has every model, and every
    preset's lr/regs fit it; a number is one value for all blocks; a model refuses a wrong length at once."""
    from pydantic import ValidationError

    from services.recommender.config import RecConfig, block_problems
    from services.recommender.kinds import CONFIG_BLOCKS
    from services.recommender.models import RECOMMENDERS

    assert set(CONFIG_BLOCKS) == set(RECOMMENDERS)
    for name, cls in RECOMMENDERS.items():
        for preset in ("fast", "study"):
            config = RecConfig(preset=preset).resolved(cls.DEFAULTS)
            assert block_problems(name, config) == [], (name, preset)
            model = cls(5, 5, {"preset": preset})
            assert [len(model.per_block(f)) for f in ("lr", "regs")] == [len(CONFIG_BLOCKS[name]["lr"]),
                                                                        len(CONFIG_BLOCKS[name]["regs"])]
    assert RecConfig(lr=0.05).lr == [0.05] and RecConfig(regs=0).regs == [0.0]
    assert RECOMMENDERS["vbpr"](5, 5, {"lr": 0.05}).per_block("lr") == [0.05] * 3
    with pytest.raises(InvalidInput, match=r"config.lr: bprmf takes one value .* or one per block: 2 \(users, items\)"):
        RECOMMENDERS["bprmf"](5, 5, {"lr": [0.1, 0.2, 0.3]})
    with pytest.raises(ValidationError):
        RecConfig.model_validate({"lr": True})  # not a number: refused, not taken as 1.0


def test_every_model_reads_its_presets_from_the_torch_free_table():
    """One source for the presets: each class's DEFAULTS is its MODEL_DEFAULTS entry (the planner's work
    estimates read the epochs there without importing torch)."""
    from services.recommender.defaults import MODEL_DEFAULTS, default_epochs
    from services.recommender.models import RECOMMENDERS

    assert set(MODEL_DEFAULTS) == set(RECOMMENDERS)
    assert all(cls.DEFAULTS is MODEL_DEFAULTS[name] for name, cls in RECOMMENDERS.items())
    assert default_epochs("vbpr", "study") == 4000 and default_epochs("acf") == 40 and default_epochs("nope") is None
