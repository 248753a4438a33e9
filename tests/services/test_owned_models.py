"""Owned models and datasets (issue 22, item 4): through the gateway, every model, extractor, features and
dataset artifact belongs to the keys that made it; another key gets 404 (as for an unknown one) and empty
lists, an admin key sees all, each key's overlay of a shared model is its own, and no answer shows a server
path. The gateway proxies to the real service apps (in-process)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from advrec.pipeline import owners
from advrec_common.apikeys import hash_key, owner_id
from tests.services.conftest import N_USERS, SIZE, png_bytes

A, B, ADMIN = "key-a-0123456789", "key-b-0123456789", "key-admin-012345"


@pytest.fixture
def gateway(tiny) -> Iterator[dict[str, TestClient]]:
    from advrec_common.settings import get_settings
    from gateway.app import create_app
    from gateway.proxy import ProxyClients
    from services.extractor import app as extractor
    from services.recommender import app as recommender

    services = {}
    for name, module in (("extractor", extractor), ("recommender", recommender)):
        app = module.create_app()
        app.dependency_overrides[get_settings] = lambda: tiny.settings
        services[name] = app
    settings = tiny.settings.model_copy(update={
        "api_key_hashes": [hash_key(A), hash_key(B)], "admin_key_hashes": [hash_key(ADMIN)],
        "extractor_url": "http://extractor", "recommender_url": "http://recommender",
        "weights_dir": tiny.home / "weights"})
    for key in tiny.keys.values():  # key A ran the job that made them
        owners.add(tiny.home, key, owner_id(A))
    gw = create_app(settings, reconcile_on_start=False)

    class Route(httpx.AsyncBaseTransport):  # the proxy's requests to the two service apps, in-process
        def __init__(self):
            self.apps = {n: httpx.ASGITransport(app=a) for n, a in services.items()}

        async def handle_async_request(self, request):
            return await self.apps[request.url.host].handle_async_request(request)

    with TestClient(gw) as a, TestClient(gw) as b, TestClient(gw) as admin:
        clients = ProxyClients()
        clients.retrying = clients.single = httpx.AsyncClient(transport=Route())
        gw.state.proxy = clients
        a.headers["X-API-Key"], b.headers["X-API-Key"], admin.headers["X-API-Key"] = A, B, ADMIN
        yield {"a": a, "b": b, "admin": admin}
    import shutil

    shutil.rmtree(tiny.home / "owners", ignore_errors=True)
    shutil.rmtree(tiny.home / "overlays", ignore_errors=True)


def test_another_keys_models_are_unknown_and_unlisted(gateway, tiny):
    a, b, admin = gateway["a"], gateway["b"], gateway["admin"]
    model, user = tiny.keys["train"], "user-00001"
    assert [m["key"] for m in a.get("/v1/recommender/models").json()] == [model]
    assert b.get("/v1/recommender/models").json() == []
    assert [m["key"] for m in admin.get("/v1/recommender/models").json()] == [model]
    assert a.get(f"/v1/recommender/models/{model}/users/{user}/top?k=5").status_code == 200
    for method, path, kw in (
            ("GET", f"/v1/recommender/models/{model}/users/{user}/top?k=5", {}),
            ("POST", f"/v1/recommender/models/{model}/score", {"json": {"items": [], "users": [user]}}),
            ("POST", f"/v1/recommender/models/{model}/items/item-00000/image",
             {"files": {"image": ("x.png", png_bytes(np.zeros((SIZE, SIZE, 3), np.uint8)))}})):
        r = b.request(method, path, **kw)
        assert r.status_code == 404 and "not in the store" in r.json()["detail"], (path, r.text)
    assert not (tiny.home / "overlays").exists()  # B's refused image wrote no overlay
    # extractors: listed for their owner only; B cannot extract with A's
    assert [e["key"] for e in a.get("/v1/extractor/extractors").json()] == [tiny.keys["extractor"]]
    assert b.get("/v1/extractor/extractors").json() == []
    r = b.post("/v1/extractor/extract", data={"extractor": tiny.keys["extractor"]},
               files={"images": ("x.png", png_bytes(np.zeros((SIZE, SIZE, 3), np.uint8)))})
    assert r.status_code == 404, r.text
    r = b.post("/v1/extractor/extract/catalog", json={"dataset": tiny.keys["dataset"],
                                                       "extractor": tiny.keys["extractor"]})
    assert r.status_code == 404
    # training on A's dataset and features
    r = b.post("/v1/models", json={"dataset": tiny.keys["dataset"], "features": tiny.keys["features"],
                                   "recommender": "vbpr"})
    assert r.status_code == 404 and "dataset" in r.json()["detail"]


def test_each_keys_overlay_of_a_shared_model_is_its_own(gateway, tiny):
    """A and B both made the same model (the same spec): B's seller image refresh changes B's scores only."""
    a, b = gateway["a"], gateway["b"]
    model, user = tiny.keys["train"], "user-00002"
    for key in tiny.keys.values():
        owners.add(tiny.home, key, owner_id(B))
    before_a = a.get(f"/v1/recommender/models/{model}/users/{user}/top?k=30").json()["items"]
    rng = np.random.default_rng(0)
    image = png_bytes(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    item = before_a[0]["item_id"]  # in this user's list: its score shows
    r = b.post(f"/v1/recommender/models/{model}/items/{item}/image", files={"image": ("new.png", image)})
    assert r.status_code == 200, r.text
    after_b = b.get(f"/v1/recommender/models/{model}/users/{user}/top?k=30").json()
    after_a = a.get(f"/v1/recommender/models/{model}/users/{user}/top?k=30").json()
    assert after_b["overlay_items"] == 1 and after_a["overlay_items"] == 0
    assert after_a["items"] == before_a  # A's scores are untouched
    score = {i["item_id"]: i["score"] for i in after_b["items"]}[item]
    assert score != before_a[0]["score"]
    listed = {m["key"]: m["overlay_items"] for m in b.get("/v1/recommender/models").json()}
    assert listed[model] == 1 and a.get("/v1/recommender/models").json()[0]["overlay_items"] == 0
    assert N_USERS > 2


def test_no_answer_shows_a_server_path(gateway, tiny):
    a = gateway["a"]
    weights = a.get("/v1/extractor/weights")
    assert weights.status_code == 200 and weights.json()
    assert str(tiny.home) not in weights.text and "<weights>" in weights.text
    for r in (a.get("/v1/recommender/models"), a.get("/v1/extractor/extractors")):
        assert str(tiny.home) not in r.text
