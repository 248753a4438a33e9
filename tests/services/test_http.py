"""The one error -> status map, the JSON error body and the health/readiness router."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from advrec_common.errors import BadCheckpoint, BadImage, InvalidInput, MissingWeights, NotFound
from advrec_common.http import (
    Overloaded,
    PayloadTooLarge,
    Unavailable,
    health_router,
    install_error_handlers,
    status_for,
)


@pytest.mark.parametrize(
    ("exc", "status"),
    [(InvalidInput("x"), 422), (BadImage("x"), 422), (BadCheckpoint("x"), 422), (NotFound("x"), 404),
     (MissingWeights("x"), 404), (PayloadTooLarge("x"), 413), (Overloaded("x"), 503), (Unavailable("x"), 503),
     (RuntimeError("x"), 500)],
)
def test_status_map(exc, status):
    assert status_for(exc) == status


def _app(checks=None) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(health_router("demo", checks))

    @app.get("/boom/{kind}")
    def boom(kind: str, n: int = 1):
        raise {"nf": NotFound("unknown user 'u9'"), "img": BadImage("corrupt"), "full": Overloaded("queue full")}[kind]

    return TestClient(app)


def test_errors_become_json_with_status():
    client = _app()
    r = client.get("/boom/nf")
    assert r.status_code == 404 and r.json() == {"error": "NotFound", "detail": "unknown user 'u9'"}
    assert client.get("/boom/img").json()["error"] == "BadImage"
    full = client.get("/boom/full")
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    bad = client.get("/boom/nf?n=abc")  # request validation -> the same body shape
    assert bad.status_code == 422 and bad.json()["error"] == "InvalidInput" and "n" in bad.json()["detail"]


def test_health_and_readiness():
    ok = _app({"store": lambda s: None})
    assert ok.get("/healthz").json() == {"service": "demo", "status": "ok"}
    assert ok.get("/readyz").status_code == 200
    down = _app({"store": lambda s: "store missing", "crash": lambda s: 1 / 0})
    r = down.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["store"] == "store missing" and "ZeroDivisionError" in r.json()["checks"]["crash"]
