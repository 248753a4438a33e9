"""Pipeline steps give identical numbers run after run, also with several CPU threads."""

from __future__ import annotations

import pytest
import torch

from advrec.pipeline.executor import _deterministic_torch
from services.recommender.models import build_recommender
from services.recommender.synthetic import make_synthetic


@pytest.fixture
def two_threads_deterministic(monkeypatch):
    from advrec_common import settings as settings_module

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    monkeypatch.setenv("ADVREC_TORCH_THREADS", "2")
    settings_module.get_settings.cache_clear()
    _deterministic_torch()
    yield
    settings_module.get_settings.cache_clear()
    torch.set_num_threads(before[0])
    torch.use_deterministic_algorithms(before[1])


@pytest.mark.parametrize("name", ["acf", "dvbpr"])
def test_multithreaded_fits_repeat_exactly(two_threads_deterministic, name):
    """ACF's attention and DVBPR's CNN vary run to run on 2 threads unless kernels are deterministic."""
    assert torch.get_num_threads() == 2 and torch.are_deterministic_algorithms_enabled()
    # large enough for multi-threaded kernels to split the work (smaller tensors stay single-threaded)
    data = make_synthetic(n_users=300, n_items=300, feature_dim=64, regions=16, region_dim=64, image_size=32)
    config = {"epochs": 2, "patience": 0, "k": 8, "batch_size": 64}
    states = []
    for noise in (1, 1000):  # different global RNG history and heap layout before each fit
        torch.rand(noise)
        model = build_recommender(name, data.train.n_users, data.train.n_items, config)
        model.fit(data.train, data.items)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
