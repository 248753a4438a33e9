"""The gateway a platform team shares (issue 22): paged job lists from the index, a per-key rate limit,
the proxy's path confinement, upload answers without server paths, and clients that ride out an outage."""

from __future__ import annotations

import asyncio
import io
import zipfile

import httpx
import pytest
from fastapi.testclient import TestClient

from advrec.pipeline.record import RunRecord
from advrec_common.apikeys import hash_key, owner_id

from .conftest import API_KEY, TINY_SPEC

pytestmark = pytest.mark.stack

OTHER = "other-key-0123456789"


def test_the_job_list_is_paged_per_key_newest_first(settings):
    from gateway.app import create_app

    s = settings.model_copy(update={"api_key_hashes": [hash_key(API_KEY), hash_key(OTHER)]})
    mine = [RunRecord.create(s.runs_dir, {"name": f"m{i}"}, run_id=f"20260101-00000{i}-m-{i:06d}",
                             executor="celery", owner=owner_id(API_KEY)).run_id for i in range(7)]
    for i in range(5):  # another key's jobs: never in this key's pages
        RunRecord.create(s.runs_dir, {"name": f"o{i}"}, executor="celery", owner=owner_id(OTHER))
    with TestClient(create_app(s, reconcile_on_start=False)) as c:
        c.headers["X-API-Key"] = API_KEY
        pages, before = [], None
        while True:
            r = c.get("/v1/jobs", params={"limit": 3, **({"before": before} if before else {})})
            assert r.status_code == 200
            pages.append([j["id"] for j in r.json()])
            before = r.headers.get("X-Next-Before")
            if before is None:
                break
        assert pages == [mine[::-1][:3], mine[::-1][3:6], mine[::-1][6:]]
        assert len(c.get("/v1/jobs").json()) == 7
        c.headers["X-API-Key"] = OTHER
        assert {j["name"] for j in c.get("/v1/jobs").json()} == {f"o{i}" for i in range(5)}
    # a state change reaches the list through the index, without rereading every record
    RunRecord.open(s.runs_dir, mine[0]).set_state("failed", "boom")
    from advrec.pipeline.record import list_page

    rows, _ = list_page(s.runs_dir, owner_id(API_KEY), 100)
    assert {r["run_id"]: r["state"] for r in rows}[mine[0]] == "failed"


def test_a_home_written_before_the_index_is_indexed_on_first_listing(settings):
    import shutil

    from advrec.pipeline.record import active_runs, list_runs

    ids = [RunRecord.create(settings.runs_dir, {"name": "x"}, owner="a" * 16).run_id for _ in range(3)]
    RunRecord.open(settings.runs_dir, ids[0]).set_state("done")
    from advrec.pipeline.job_index import index_dir

    shutil.rmtree(index_dir(settings.runs_dir))
    assert sorted(r["run_id"] for r in list_runs(settings.runs_dir)) == sorted(ids)
    assert active_runs(settings.runs_dir) == sorted(ids[1:])


def test_each_key_is_rate_limited_with_retry_after(settings):
    from gateway.app import create_app

    s = settings.model_copy(update={"api_key_hashes": [hash_key(API_KEY), hash_key(OTHER)],
                                    "quota_requests_per_minute": 60})  # bursts of 6
    with TestClient(create_app(s, reconcile_on_start=False)) as c:
        codes = [c.get("/v1/jobs", headers={"X-API-Key": API_KEY}).status_code for _ in range(8)]
        assert codes[:6] == [200] * 6 and codes[6:] == [429, 429]
        r = c.get("/v1/jobs", headers={"X-API-Key": API_KEY})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "60 requests a minute" in r.json()["detail"] and "quota_requests_per_minute" in r.json()["detail"]
        # another key is not slowed down by the first; health is not counted
        assert c.get("/v1/jobs", headers={"X-API-Key": OTHER}).status_code == 200
        assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["..%2F..%2Fopenapi.json", "..%2Fopenapi.json", "models/..%2F..%2F..%2Fopenapi.json",
                                  "%2E%2E/openapi.json", "x/%2E/..%2Fattacks"])
def test_the_proxy_never_climbs_out_of_the_services_v1(gateway_client, path):
    r = gateway_client.get(f"/v1/attacker/{path}")
    assert r.status_code == 404 and "segments are not forwarded" in r.json()["detail"], r.text


def test_an_upload_warning_names_no_server_folder(gateway_client, settings):
    from .test_datasets_upload import _catalog

    files = _catalog()
    files["shop/interactions.csv"] += b"u9,ghost-item,99\n"  # an item without an image: a warning naming the folder
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    r = gateway_client.post("/v1/datasets", files={"archive": ("shop.zip", buf.getvalue(), "application/zip")})
    assert r.status_code == 201, r.text
    warnings = r.json()["warnings"]
    assert any("no image" in w["msg"] for w in warnings), warnings
    assert "upload-" not in r.text and str(settings.home) not in r.text and "/tmp" not in r.text


class Outage(httpx.AsyncBaseTransport):
    """The real gateway behind a transport that is down for the first ``seconds`` of a fake clock that each
    attempt advances by the client's own backoff (so minutes pass in milliseconds)."""

    def __init__(self, app, seconds: float, clock: list[float]):
        self.inner, self.seconds, self.clock, self.posts, self.failed = httpx.ASGITransport(app=app), seconds, clock, 0, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.posts += request.method == "POST"
        if self.clock[0] < self.seconds:
            self.failed += 1
            if request.method == "POST" and self.failed % 2:  # some submits arrive, and their answer is lost
                await self.inner.handle_async_request(request)
                raise httpx.ReadError("connection reset", request=request)
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


def test_submit_and_status_ride_through_a_ten_minute_outage_with_one_job(settings, monkeypatch):
    import advrec.client
    from gateway.app import create_app

    clock = [0.0]
    monkeypatch.setattr(advrec.client.time, "monotonic", lambda: clock[0])

    async def sleep(seconds: float) -> None:  # the backoff passes on the fake clock
        clock[0] += seconds

    monkeypatch.setattr(advrec.client.asyncio, "sleep", sleep)
    app = create_app(settings, reconcile_on_start=False)
    told: list[str] = []

    async def go():
        transport = Outage(app, 600.0, clock)
        async with advrec.client.AsyncAdvrecClient("http://gw", API_KEY, transport=transport,
                                                   on_retry=lambda why, delay: told.append(why)) as c:
            job = await c.submit(TINY_SPEC)
            clock[0] = 0.0  # a second outage, now for a status read
            status = await c.status(job)
            return job, status, await c.list_jobs(), transport

    job, status, jobs, transport = asyncio.run(go())
    assert status["id"] == job and [j["id"] for j in jobs] == [job]  # one job, though submits arrived before
    assert transport.posts > 10 and told and any("ReadError" in w for w in told)
    assert advrec.client.DEFAULT_RETRY_FOR is None  # the default: no deadline, as `wait`


def test_the_cli_says_once_that_it_retries(monkeypatch, capsys):
    from advrec.commands.client import client_from_args

    class Args:
        server, api_key, timeout, retry_for = "http://gw", API_KEY, 1.0, None

    c = client_from_args(Args())
    c.on_retry("ConnectError: refused", 0.5)
    c.on_retry("ConnectError: refused", 1.0)
    err = capsys.readouterr().err
    assert err.count("retrying until it answers") == 1 and "http://gw is unavailable" in err


def _published(settings) -> tuple[dict, dict]:
    """The gateway's published schemas of a job body and of an upload form (refs resolvable by jsonschema)."""
    import json

    from gateway.app import create_app

    openapi = create_app(settings, reconcile_on_start=False).openapi()
    components = json.loads(json.dumps(openapi["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/"))
    job = {"$defs": components, "anyOf": [{"$ref": "#/$defs/EvaluationSpec"}, {"$ref": "#/$defs/PresetRequest"}]}
    upload = {"$defs": components, "$ref": "#/$defs/Body_upload_dataset_v1_datasets_post"}
    return job, upload


def test_the_published_schema_refuses_what_the_api_refuses(settings, gateway_client):
    """Inputs Schemathesis found schema-valid but refused (422) are schema-invalid now: an unknown attack method
    or recommender, a method without a linf variant left at the default norm, a demo extractor without a
    defense, an upload without files. Each is still refused by the API, and the valid ones pass both."""
    import jsonschema_rs  # schemathesis' own validator

    job, upload = _published(settings)
    refused = [
        {**TINY_SPEC, "attacks": [{"method": "", "eps": [8]}]},
        {**TINY_SPEC, "recommenders": [{"name": ""}]},
        {**TINY_SPEC, "attacks": [{"method": "cw", "eps": [1]}]},
        {**TINY_SPEC, "extractors": [{"name": "0"}]},
    ]
    for body in refused:
        assert not jsonschema_rs.Draft202012Validator(job).is_valid(body), body
        assert gateway_client.post("/v1/jobs:validate", json=body).status_code == 422
    for body in (TINY_SPEC, {**TINY_SPEC, "attacks": [{"method": "cw", "norm": "l2", "eps": [1]}]},
                 {**TINY_SPEC, "extractors": [{"name": "mine", "defense": "pgd_at"}]}):
        assert jsonschema_rs.Draft202012Validator(job).is_valid(body), body
        assert gateway_client.post("/v1/jobs:validate", json=body).status_code == 200
    assert not jsonschema_rs.Draft202012Validator(upload).is_valid({})
    assert gateway_client.post("/v1/datasets", data={"columns": ""}).status_code == 422
    assert jsonschema_rs.Draft202012Validator(upload).is_valid({"archive": "zip bytes"})
    assert jsonschema_rs.Draft202012Validator(upload).is_valid({"images": ["a"], "interactions": "csv"})


def test_true_and_false_are_not_numbers(gateway_client, settings):
    """Python reads true/false as 1/0; the published schema says number: refused with their paths (a
    Schemathesis finding: `gallery_users: false` was accepted)."""
    body = {**TINY_SPEC, "gallery_users": False, "recommenders": [{"name": "vbpr", "config": {"epochs": True}}]}
    r = gateway_client.post("/v1/jobs:validate", json=body)
    assert r.status_code == 422
    assert {e["loc"] for e in r.json()["errors"]} == {"gallery_users", "recommenders[0].config.epochs"}
    assert gateway_client.post("/v1/jobs:validate", json=TINY_SPEC).status_code == 200
