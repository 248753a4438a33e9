"""Shared fixtures: an isolated advrec home and artifact store per test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython at import time
# one CPU thread per pipeline step in tests and the workers they start: the 2 cores are shared
os.environ.setdefault("ADVREC_TORCH_THREADS", "1")


@pytest.fixture
def store(tmp_path):
    from advrec_common.store import ArtifactStore

    return ArtifactStore(tmp_path / "store")
