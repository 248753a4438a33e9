"""Shared fixtures: an isolated advrec home and artifact store per test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython at import time


@pytest.fixture
def store(tmp_path):
    from advrec_common.store import ArtifactStore

    return ArtifactStore(tmp_path / "store")
