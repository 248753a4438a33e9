"""Fixtures of the stack tests: a real, private Redis (tests/redis_server.py), real worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from advrec_common.settings import Settings
from tests.redis_server import free_port
from tests.redis_server import redis_url as private_redis_url

API_KEY = "test-key-0123456789"

# The tiny evaluation every end-to-end test runs (seconds on CPU).
TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"kind": "demo", "n_items": 60, "n_users": 60},
    "extractors": [{"name": "standard", "demo_images_per_class": 10, "epochs": 1}],
    "attacks": [{"method": "fgsm", "eps": [8]}],
    "recommenders": [{"name": "vbpr", "config": {"epochs": 5}}],
    "ks": [5, 10],
}


@pytest.fixture(scope="session")
def redis_url() -> str:
    """DB 5 of this session's private Redis."""
    return private_redis_url(5)


@pytest.fixture
def api_key_hash() -> str:
    from advrec_common.apikeys import hash_key

    return hash_key(API_KEY)


@pytest.fixture
def settings(tmp_path, redis_url, api_key_hash) -> Settings:
    return Settings(home=tmp_path / "home", redis_url=redis_url, api_key_hashes=[api_key_hash], device="cpu",
                    max_upload_bytes=200_000)


@pytest.fixture
def gateway_client(settings) -> Iterator[Any]:
    """The gateway app in-process (FastAPI TestClient), no reconcile on start."""
    from fastapi.testclient import TestClient

    from gateway.app import create_app

    with TestClient(create_app(settings, reconcile_on_start=False)) as client:
        client.headers["X-API-Key"] = API_KEY
        yield client


@pytest.fixture
def make_stack(tmp_path, redis_url, api_key_hash) -> Iterator[Callable[..., Any]]:
    """Start a real stack (gateway + one solo worker per queue, no service apps) in its own home."""
    from advrec.stack.launcher import Stack, StackConfig

    stacks: list[Stack] = []

    def make(name: str = "stack", require_workers: bool = True, **config: Any) -> Stack:
        config.setdefault("redis_url", redis_url)
        stack = Stack(StackConfig(home=tmp_path / name, port=free_port(), services=False,
                                  api_key_hashes=[api_key_hash], device="cpu",
                                  extra_env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                             "ADVREC_RECONCILE_EVERY_S": "2"}, **config))
        stacks.append(stack)
        stack.up(timeout=90, require_workers=require_workers)
        return stack

    yield make
    for stack in stacks:
        stack.down(timeout=10)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Any:
    """The tiny spec run by the in-process executor in its own home: that home and the run's record."""
    from advrec.pipeline.executor import run_inprocess
    from advrec.pipeline.spec import parse_spec
    from advrec_common.store import ArtifactStore

    home = tmp_path_factory.mktemp("inprocess")
    rec = run_inprocess(parse_spec(TINY_SPEC), ArtifactStore(home / "store"), home / "runs", device="cpu",
                        show_progress=False)
    assert rec.read()["state"] == "done"
    return home, rec


@pytest.fixture(scope="session")
def inprocess_results(tiny_run) -> dict[str, Any]:
    """results.json of the tiny spec run by the in-process executor."""
    import json

    return json.loads((tiny_run[1].dir / "report" / "results.json").read_text())
