"""Doors: jobs and datasets belong to the key that created them (admins see all); the services answer
only with the internal token, which the gateway's proxy sends."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from advrec_common.apikeys import hash_key

from .conftest import API_KEY, TINY_SPEC
from .test_datasets_upload import _catalog, _zip

pytestmark = pytest.mark.stack

OTHER, ADMIN = "other-key-0123456789", "admin-key-0123456789"


@pytest.fixture
def clients(settings):
    from gateway.app import create_app

    s = settings.model_copy(update={"api_key_hashes": [hash_key(API_KEY), hash_key(OTHER)],
                                    "admin_key_hashes": [hash_key(ADMIN)]})
    app = create_app(s, reconcile_on_start=False)
    with TestClient(app) as a, TestClient(app) as b, TestClient(app) as admin:
        a.headers["X-API-Key"], b.headers["X-API-Key"], admin.headers["X-API-Key"] = API_KEY, OTHER, ADMIN
        yield a, b, admin


def test_a_key_sees_only_its_own_jobs_and_an_admin_sees_all(clients):
    a, b, admin = clients
    job = a.post("/v1/jobs", json=TINY_SPEC).json()["id"]
    assert [j["id"] for j in a.get("/v1/jobs").json()] == [job]
    assert b.get("/v1/jobs").json() == []
    for method, path in (("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/results"),
                         ("GET", f"/v1/jobs/{job}/report"), ("GET", f"/v1/jobs/{job}/artifacts/results.json"),
                         ("DELETE", f"/v1/jobs/{job}")):
        assert b.request(method, path).status_code == 404, path  # as if it did not exist
    assert a.get(f"/v1/jobs/{job}").json()["state"] != "cancelled"
    assert [j["id"] for j in admin.get("/v1/jobs").json()] == [job]
    assert admin.delete(f"/v1/jobs/{job}").json()["state"] == "cancelled"


def test_datasets_belong_to_their_uploaders(clients, settings):
    a, b, admin = clients
    info = a.post("/v1/datasets", files={"archive": ("shop.zip", _zip(_catalog()), "application/zip")}).json()
    assert "owners" not in info
    assert b.get("/v1/datasets").json() == [] and b.get(f"/v1/datasets/{info['id']}").status_code == 404
    # a job of another key cannot read it by its path either
    spec = {**TINY_SPEC, "dataset": info["spec"]}
    r = b.post("/v1/jobs", json=spec)
    assert r.status_code == 404 and "unknown dataset" in r.json()["detail"], r.text
    assert [d["id"] for d in admin.get("/v1/datasets").json()] == [info["id"]]
    # the same content uploaded by the other key is shared with it (same id, nothing stored twice)
    again = b.post("/v1/datasets", files={"archive": ("x.zip", _zip(_catalog()), "application/zip")}).json()
    assert again["id"] == info["id"] and [d["id"] for d in b.get("/v1/datasets").json()] == [info["id"]]


def test_services_require_the_internal_token_and_the_proxy_sends_it(settings):
    from advrec_common.settings import get_settings
    from gateway.app import create_app
    from gateway.proxy import ProxyClients
    from services.attacker import app as attacker

    svc_settings = settings.model_copy(update={"internal_token": "s3cret-token"})
    service = attacker.create_app()
    service.dependency_overrides[get_settings] = lambda: svc_settings
    with TestClient(service) as direct:
        assert direct.get("/healthz").status_code == 200  # health stays open
        assert direct.get("/v1/attacks").status_code == 401
        assert direct.get("/v1/attacks", headers={"X-Internal-Token": "guess"}).status_code == 403
        assert direct.get("/v1/attacks", headers={"X-Internal-Token": "s3cret-token"}).status_code == 200
    unset = attacker.create_app()
    unset.dependency_overrides[get_settings] = lambda: settings  # no token configured: refuses everyone
    with TestClient(unset) as c:
        assert c.get("/v1/attacks", headers={"X-Internal-Token": ""}).status_code == 503

    gateway = create_app(svc_settings.model_copy(update={"attacker_url": "http://attacker"}), reconcile_on_start=False)
    with TestClient(gateway) as g:
        clients = ProxyClients()
        transport = httpx.ASGITransport(app=service)
        clients.retrying = clients.single = httpx.AsyncClient(transport=transport)
        g.app.state.proxy = clients
        r = g.get("/v1/attacker/attacks", headers={"X-API-Key": API_KEY, "X-Internal-Token": "guess"})
        assert r.status_code == 200 and {a["name"] for a in r.json()} >= {"fgsm", "pgd"}
