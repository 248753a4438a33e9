"""The one error model (class -> status, RFC 9457 problem body) and the one health/readiness shape."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from advrec_common.errors import (
    BadCheckpoint,
    BadImage,
    Conflict,
    Forbidden,
    InvalidInput,
    MissingWeights,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
    invalid,
    status_for,
)
from advrec_common.http import health_router, install_error_handlers


@pytest.mark.parametrize(
    ("exc", "status"),
    [(InvalidInput("x"), 422), (BadImage("x"), 422), (BadCheckpoint("x"), 422), (NotFound("x"), 404),
     (MissingWeights("x"), 404), (PayloadTooLarge("x"), 413), (Overloaded("x"), 503), (Unavailable("x"), 503),
     (Unauthorized("x"), 401), (Forbidden("x"), 403), (Conflict("x"), 409), (QuotaExceeded("x"), 429),
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
        if kind == "crash":
            raise RuntimeError("/secret/server/path exploded")
        raise {"nf": NotFound("unknown user 'u9'"), "img": BadImage("corrupt"), "full": Overloaded("queue full"),
               "many": invalid([("attacks[0].eps", "must be >= 1"), ("ks[1]", "must be > 0")], "bad spec")}[kind]

    return TestClient(app, raise_server_exceptions=False)


def test_errors_are_problem_details():
    client = _app()
    r = client.get("/boom/nf")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json() == {"type": "urn:advrec:problem:not-found", "title": "Not found", "status": 404,
                        "detail": "unknown user 'u9'", "instance": "/boom/nf", "errors": []}
    assert client.get("/boom/img").json()["type"] == "urn:advrec:problem:bad-image"
    full = client.get("/boom/full")
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    many = client.get("/boom/many").json()
    assert many["errors"] == [{"loc": "attacks[0].eps", "msg": "must be >= 1"}, {"loc": "ks[1]", "msg": "must be > 0"}]
    bad = client.get("/boom/nf?n=abc")  # request validation -> the same body shape, every field listed
    assert bad.status_code == 422 and bad.json()["type"] == "urn:advrec:problem:invalid-input"
    assert bad.json()["errors"][0]["loc"] == "query.n"
    missing = client.get("/nowhere")  # the framework's own 404 has the same shape
    assert missing.status_code == 404 and missing.json()["title"] == "Not found"
    crash = client.get("/boom/crash")  # unexpected: a 500 problem without the message or a path
    assert crash.status_code == 500 and "/secret" not in crash.text and crash.json()["status"] == 500


def test_health_and_readiness_have_one_shape():
    ok = _app({"store": lambda s: None})
    assert ok.get("/healthz").json() == {"service": "demo", "status": "ok", "checks": {}}
    assert ok.get("/readyz").status_code == 200 and ok.get("/readyz").json()["status"] == "ready"
    down = _app({"store": lambda s: "store missing", "crash": lambda s: 1 / 0})
    r = down.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not ready"
    assert r.json()["checks"]["store"] == "store missing" and "ZeroDivisionError" in r.json()["checks"]["crash"]
