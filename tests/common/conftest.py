"""Shared fixtures of the dataset tests: one tiny demo dataset per session."""

from __future__ import annotations

import pytest

from advrec_common.datasets.demo import DemoConfig, make_demo_dataset
from advrec_common.datasets.types import RecDataset

TINY = DemoConfig(n_items=30, n_users=25, image_size=24, interactions_per_user=(3, 6), seed=5)


@pytest.fixture(scope="session")
def tiny_demo() -> RecDataset:
    return make_demo_dataset(TINY)
