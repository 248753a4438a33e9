"""Shared fixtures: an isolated advrec home and artifact store per test."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython at import time
# one CPU thread per pipeline step in tests and the workers they start: the 2 cores are shared
os.environ.setdefault("ADVREC_TORCH_THREADS", "1")
# Never the real user's home (the default is one per user, ~/.local/share/advrec): every test, and every
# process a test starts (they inherit the environment), works in this session's own home unless it names
# another; a test of the default sets XDG_DATA_HOME to a temporary folder
_SESSION_HOME = tempfile.mkdtemp(prefix="advrec-tests-home-")
os.environ["ADVREC_HOME"] = _SESSION_HOME
os.environ["XDG_DATA_HOME"] = os.path.join(_SESSION_HOME, "xdg-data")
atexit.register(shutil.rmtree, _SESSION_HOME, True)
# one step at a time unless a test asks for more (--jobs auto depends on the load; monkeypatches reach this
# process only)
os.environ.setdefault("ADVREC_JOBS", "1")


@pytest.fixture(autouse=True)
def _home_isolated():
    """`--home` sets ADVREC_HOME process-wide (advrec/commands/run.py): restore it after every test, and
    forget the settings read meanwhile (a test may also have changed XDG_DATA_HOME or HOME)."""
    from advrec_common.settings import get_settings

    before = os.environ.get("ADVREC_HOME")
    yield
    if os.environ.get("ADVREC_HOME") != before:
        if before is None:
            os.environ.pop("ADVREC_HOME", None)
        else:
            os.environ["ADVREC_HOME"] = before
    get_settings.cache_clear()


@pytest.fixture
def store(tmp_path):
    from advrec_common.store import ArtifactStore

    return ArtifactStore(tmp_path / "store")
