"""Training jobs go through the gateway (``POST /v1/models``): the pipeline's train step on stored artifacts."""

from __future__ import annotations

import base64
import json

import pytest
import redis
from fastapi.testclient import TestClient

from advrec.pipeline.celery_executor import run_step
from advrec.pipeline.queue import key_prefix
from tests.services.conftest import store_snapshot

API_KEY = "svc-test-key"


@pytest.fixture
def gateway(tiny):
    from advrec.pipeline import owners
    from advrec_common.apikeys import hash_key, owner_id
    from gateway.app import create_app

    settings = tiny.settings.model_copy(update={"api_key_hashes": [hash_key(API_KEY)]})
    for key in (tiny.keys["dataset"], tiny.keys["features"]):  # this key made them (a job of its own would)
        owners.add(tiny.home, key, owner_id(API_KEY))
    with TestClient(create_app(settings, reconcile_on_start=False)) as client:
        client.headers["X-API-Key"] = API_KEY
        yield client


def test_training_job_reuses_pipeline_key_and_trains_new_config(gateway, tiny):
    base = {"dataset": tiny.keys["dataset"], "features": tiny.keys["features"], "recommender": "vbpr",
            "config": {"k": 8, "epochs": 2, "batch_size": 64, "patience": 0}, "seed": 0, "max_k": 10}
    r = gateway.post("/v1/models", json=base)
    assert r.status_code == 202, r.text
    assert r.json()["model"] == tiny.keys["train"]  # same parameters -> the pipeline's artifact key
    assert r.json()["state"] == "done"  # already stored: nothing to train
    new = gateway.post("/v1/models", json={**base, "seed": 1}).json()
    assert new["model"] != tiny.keys["train"]
    job = gateway.get(f"/v1/jobs/{new['job_id']}").json()
    assert job["state"] in ("queued", "running") and not tiny.store.has(new["model"])
    # the one step task went to the `recommend` queue; run the message as a worker would
    broker = redis.Redis.from_url(tiny.settings.redis_url)
    message = json.loads(broker.rpop(key_prefix(tiny.settings.namespace) + "recommend"))  # this stack's queue
    assert message["headers"]["task"] == "advrec.run_step"
    run_id, step_name = json.loads(base64.b64decode(message["body"]))[0]  # Celery protocol 2: [args, kwargs, embed]
    assert run_id == new["job_id"]
    assert run_step(run_id, step_name, settings=tiny.settings) == "done"
    assert gateway.get(f"/v1/jobs/{new['job_id']}").json()["state"] == "done"
    assert tiny.store.has(new["model"])
    from advrec.pipeline import owners
    from advrec_common.apikeys import owner_id

    assert owners.owns(tiny.home, new["model"], owner_id(API_KEY))  # the trained model is the caller's
    from services.recommender.serving import lineage

    assert lineage(tiny.store, new["model"])["dataset"] == tiny.keys["dataset"]


@pytest.mark.parametrize(("change", "status"), [({"recommender": "nope"}, 404), ({"features": None}, 422),
                                                 ({"dataset": "e" * 64}, 404), ({"features": "../x"}, 422),
                                                 ({"config": {"epochz": 3}}, 422)])
def test_training_errors(gateway, tiny, change, status):
    body = {"dataset": tiny.keys["dataset"], "features": tiny.keys["features"], "recommender": "vbpr", **change}
    before = store_snapshot(tiny.home / "store")
    r = gateway.post("/v1/models", json=body)
    assert r.status_code == status, r.text
    assert store_snapshot(tiny.home / "store") == before
    if "config" in change:
        assert r.json()["errors"][0]["loc"] == "config.epochz"
    assert gateway.get("/v1/jobs/no-such-job").status_code == 404
