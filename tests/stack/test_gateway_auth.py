"""(d) API keys: missing -> 401, wrong -> 403, right -> 200; health endpoints are open."""

from __future__ import annotations

import pytest

from advrec_common.apikeys import hash_key, key_accepted

pytestmark = pytest.mark.stack

PROTECTED = [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("DELETE", "/v1/jobs/x"),
             ("GET", "/v1/jobs/x/results"), ("GET", "/v1/datasets"), ("POST", "/v1/datasets"),
             ("GET", "/v1/extractor/healthz")]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_key_401_wrong_key_403(gateway_client, method, path):
    no_key = gateway_client.request(method, path, headers={"X-API-Key": ""})
    assert no_key.status_code == 401
    wrong = gateway_client.request(method, path, headers={"X-API-Key": "not-the-key"})
    assert wrong.status_code == 403


def test_right_key_is_accepted_and_health_is_open(gateway_client, settings):
    from advrec.pipeline.queue import QUEUES
    from advrec.pipeline.workers import register, unregister

    assert gateway_client.get("/v1/jobs").status_code == 200
    assert gateway_client.get("/healthz", headers={"X-API-Key": ""}).json()["status"] == "ok"
    # no worker yet: not ready, naming every queue without a consumer
    ready = gateway_client.get("/readyz", headers={"X-API-Key": ""})
    assert ready.status_code == 503
    assert all(f"queue {q!r} has no live consumer" in ready.json()["checks"]["workers"] for q in QUEUES)
    register(settings, "w@host-a", list(QUEUES))
    try:
        ready = gateway_client.get("/readyz", headers={"X-API-Key": ""})
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"redis": "ok", "store": "ok", "workers": "ok", "namespace": "ok"}
    finally:
        unregister(settings, "w@host-a")


def test_keys_are_stored_as_sha256_hashes():
    h = hash_key("secret")
    assert len(h) == 64 and h != "secret"
    assert key_accepted("secret", ["0" * 64, h.upper()])
    assert not key_accepted("secret2", [h])
    assert not key_accepted("secret", [])


def test_readyz_reports_a_dead_redis(settings):
    from fastapi.testclient import TestClient

    from gateway.app import create_app

    dead = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(dead, reconcile_on_start=False)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["redis"].startswith("unreachable")
