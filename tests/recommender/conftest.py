"""Fixtures of the recommender tests: a synthetic dataset with visual signal and fitted models."""

from __future__ import annotations

import pytest
import torch

from services.recommender.synthetic import make_synthetic

# few epochs keep every fit well under a few seconds; the dataset is small (200 users, 160 items)
FAST = {"epochs": 12, "patience": 0, "seed": 0}
MODELS = ["bprmf", "vbpr", "amr", "deepstyle", "acf", "dvbpr"]


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine is shared: tiny tensors run faster (and steadier) on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def synth():
    return make_synthetic()


@pytest.fixture(scope="session")
def fitted(synth):
    """One fitted model per registry name (shared; tests must not mutate them)."""
    from services.recommender.models import build_recommender

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for name in MODELS:
        model = build_recommender(name, synth.train.n_users, synth.train.n_items, FAST)
        model.fit(synth.train, synth.items)
        out[name] = model
    torch.set_num_threads(old)
    return out
