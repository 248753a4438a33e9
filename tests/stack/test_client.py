"""The client's error mapping (typed errors), against the real gateway app in-process."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from advrec.client import AsyncAdvrecClient, GatewayUnreachable
from advrec_common.errors import Forbidden, InvalidInput, NotFound

from .conftest import API_KEY, free_port

pytestmark = pytest.mark.stack


def _run(settings, key, fn):
    from gateway.app import create_app

    async def go():
        transport = httpx.ASGITransport(app=create_app(settings, reconcile_on_start=False))
        async with AsyncAdvrecClient("http://gw", key, transport=transport) as c:
            return await fn(c)

    return asyncio.run(go())


def test_http_errors_become_typed_errors(settings):
    with pytest.raises(NotFound, match="unknown job"):
        _run(settings, API_KEY, lambda c: c.status("20990101-000000-x-000000"))
    with pytest.raises(InvalidInput, match="invalid evaluation spec"):
        _run(settings, API_KEY, lambda c: c.submit({"extractors": []}))
    with pytest.raises(InvalidInput, match="unknown preset"):
        _run(settings, API_KEY, lambda c: c.submit(preset="nope"))
    with pytest.raises(Forbidden, match="invalid API key"):
        _run(settings, "wrong", lambda c: c.list_jobs())


def test_unreachable_gateway_is_a_typed_error():
    from advrec.client import AdvrecClient

    with AdvrecClient(f"http://127.0.0.1:{free_port()}", API_KEY, timeout=2, retry_for=1) as c, \
            pytest.raises(GatewayUnreachable, match="cannot reach"):
        c.list_jobs()


@pytest.mark.parametrize(("url", "says"), [("http://[::1", "is not a valid URL"), ("localhost:8000", "needs http://"),
                                          ("ftp://gw", "needs http://"), ("http://", "needs http://")])
def test_a_malformed_gateway_url_is_a_user_error_naming_the_flag(url, says, capsys):
    """A malformed --server is InvalidInput naming --server / ADVREC_SERVER (before any request), and the
    CLI prints it as a user error (exit 2), not as an unexpected bug."""
    from advrec.cli import main
    from advrec.client import AdvrecClient

    with pytest.raises(InvalidInput, match=f"{says}.*--server or ADVREC_SERVER"):
        AdvrecClient(url, API_KEY)
    assert main(["jobs", "--server", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("advrec: error: gateway URL") and "bug" not in err


class Flaky(httpx.AsyncBaseTransport):
    """The real gateway behind a transport that fails the first ``n`` requests: ``mode`` = "connect" (never
    arrives), "lost" (arrives, the answer is lost) or an HTTP status the "proxy" answers instead."""

    def __init__(self, app, n: int, mode: str | int, only: str | None = None):
        self.inner, self.n, self.mode, self.only, self.seen = httpx.ASGITransport(app=app), n, mode, only, []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.method)
        if self.n > 0 and (self.only is None or request.method == self.only):
            self.n -= 1
            if self.mode == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            if self.mode == "lost":
                await self.inner.handle_async_request(request)  # the gateway acts on it...
                raise httpx.ReadError("connection reset", request=request)  # ...the answer never comes
            return httpx.Response(int(self.mode), headers={"retry-after": "0"}, request=request)
        return await self.inner.handle_async_request(request)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """The retry policy as shipped, with a shorter backoff (the tests count attempts, not seconds)."""
    import advrec.client

    monkeypatch.setattr(advrec.client, "BACKOFF_FIRST_S", 0.02)
    monkeypatch.setattr(advrec.client, "BACKOFF_MAX_S", 0.1)


def _with(settings, transport_of, fn, retry_for=10.0):
    from gateway.app import create_app

    app = create_app(settings, reconcile_on_start=False)

    async def go():
        transport = transport_of(app)
        async with AsyncAdvrecClient("http://gw", API_KEY, transport=transport, retry_for=retry_for) as c:
            return await fn(c), transport

    return asyncio.run(go())


@pytest.mark.parametrize("mode", ["connect", 502, 503, 504])
def test_reads_are_retried_through_an_outage(settings, mode):
    jobs, t = _with(settings, lambda app: Flaky(app, 3, mode), lambda c: c.list_jobs())
    assert jobs == [] and t.seen == ["GET"] * 4


def test_a_submit_whose_answer_was_lost_is_repeated_without_a_second_job(settings):
    from .conftest import TINY_SPEC

    async def submit_and_list(c):
        job = await c.submit(TINY_SPEC)
        return job, await c.list_jobs()

    (job, jobs), t = _with(settings, lambda app: Flaky(app, 2, "lost", only="POST"), submit_and_list)
    assert t.seen.count("POST") == 3  # two lost answers, then the gateway's answer
    assert [j["id"] for j in jobs] == [job]  # the Idempotency-Key made the repeats return the same job


def test_retries_stop_at_the_deadline(settings):
    import time

    t0 = time.monotonic()
    with pytest.raises(GatewayUnreachable):
        _with(settings, lambda app: Flaky(app, 10**6, "connect"), lambda c: c.list_jobs(), retry_for=1.0)
    assert 0.8 < time.monotonic() - t0 < 4


def test_a_call_not_safe_to_repeat_is_not_repeated_after_it_arrived(settings):
    from advrec.client import ApiError, Call

    async def once(c):
        call = Call("POST", "/v1/models", json={"dataset": "0" * 64, "recommender": "vbpr"}, safe_to_repeat=False)
        return await c._do(call)

    with pytest.raises(ApiError) as err:
        _with(settings, lambda app: Flaky(app, 1, 502, only="POST"), once)
    assert err.value.status_code == 502


def test_wait_polls_through_an_outage(settings):
    from advrec.pipeline.record import RunRecord
    from advrec_common.apikeys import owner_id

    rec = RunRecord.create(settings.runs_dir, {"name": "x"}, executor="celery", owner=owner_id(API_KEY))
    rec.set_state("done")
    # every status call fails for longer than retry_for: wait keeps polling and returns once it answers
    final, t = _with(settings, lambda app: Flaky(app, 6, "connect"),
                     lambda c: c.wait(rec.run_id, poll_interval=0.05, timeout=30), retry_for=0.2)
    assert final["state"] == "done" and len(t.seen) >= 7


def test_submit_wait_prints_the_job_id_first(monkeypatch, capsys):
    import advrec.commands.client as cli
    from advrec.cli import main

    class Fake:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit_job(self, body):
            return {"id": "20990101-000000-demo-abcdef", "warnings": []}

        def wait(self, *a, **k):
            raise KeyboardInterrupt  # the user gives up waiting: the id is already on screen

    monkeypatch.setattr(cli, "AdvrecClient", Fake)
    assert main(["submit", "demo", "--wait"]) == 130  # interrupted: no traceback, the usual exit status
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "20990101-000000-demo-abcdef" and "interrupted" in err


def test_submit_validate_and_submit_print_admission_warnings(monkeypatch, capsys, gateway_client, settings):
    import json
    import re

    import advrec.commands.client as cli
    from advrec.cli import main
    from advrec.client import AdvrecClient

    from .conftest import TINY_SPEC

    # the CLI's own client, sending through the in-process gateway
    monkeypatch.setattr(cli, "AdvrecClient", lambda url, key, **kw: AdvrecClient(
        url, API_KEY, transport=gateway_client._transport, retry_for=0))
    spec = settings.home / "noted.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({**TINY_SPEC, "dataset": {**TINY_SPEC["dataset"], "kcore": 5}}))
    assert main(["submit", str(spec), "--validate"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"spec 'tiny' passes the gateway's admission \(n_items 60, n_users 60, \d+ steps\); "
                     r"nothing was queued", out), out
    assert "warning: dataset.kcore: ignored" in err
    assert gateway_client.get("/v1/jobs").json() == []
    assert main(["submit", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == gateway_client.get("/v1/jobs").json()[0]["id"] and "dataset.kcore" in err
    spec.write_text(json.dumps({**TINY_SPEC, "ks": [0]}))
    assert main(["submit", str(spec), "--validate"]) == 2
    assert "ks[0]" in capsys.readouterr().err


def test_a_local_spec_sent_to_a_stack_is_told_to_upload_its_catalog_first(monkeypatch, capsys, gateway_client,
                                                                           settings, tmp_path):
    """The walkthrough's spec, its shop on the user's machine, submitted as is: the server has no such files.
    The answer said only "image folder does not exist"; it says to upload the catalog first (the gateway,
    for any client) and, from the CLI, the very `advrec upload` command for the files the spec names."""
    import json
    import runpy
    import shutil
    from pathlib import Path

    import advrec.commands.client as cli
    from advrec.cli import main
    from advrec.client import AdvrecClient

    from .conftest import TINY_SPEC

    root = Path(__file__).resolve().parents[2] / "examples" / "own_catalog"
    runpy.run_path(str(root / "make_sample.py"))["write_sample_catalog"](tmp_path / "shop", n_items=20, n_users=30,
                                                                         image_size=16)
    shutil.copy(root / "spec.yaml", tmp_path / "spec.yaml")
    monkeypatch.setattr(cli, "AdvrecClient", lambda url, key, **kw: AdvrecClient(
        url, API_KEY, transport=gateway_client._transport, retry_for=0))
    monkeypatch.chdir(settings.home.parent)  # not the spec's folder
    for verb in (["submit", str(tmp_path / "spec.yaml"), "--validate"], ["submit", str(tmp_path / "spec.yaml")]):
        assert main(verb) == 2
        err = capsys.readouterr().err
        assert "dataset.images_dir: <home>/datasets/shop/images: image folder does not exist; the server reads " \
               "dataset paths in its datasets folder: a catalog on your machine is uploaded first (`advrec upload " \
               "DIR`, or `client.upload_dataset(...)` in Python)" in err
        assert "the spec's dataset is on this machine, not on the server: upload it first with\n  advrec upload " \
               f"--images {tmp_path / 'shop' / 'images'} --interactions {tmp_path / 'shop' / 'interactions.csv'} " \
               f"--categories {tmp_path / 'shop' / 'categories.csv'}\n" in err
    assert gateway_client.get("/v1/jobs").json() == []
    # a server path that does not exist, with nothing of that name here: the server's hint only
    (tmp_path / "remote.json").write_text(json.dumps({**TINY_SPEC, "dataset": {
        "kind": "generic", "images_dir": "ds-0000000000000000/images", "interactions": "ds-0000000000000000/i.csv"}}))
    assert main(["submit", str(tmp_path / "remote.json"), "--validate"]) == 2
    err = capsys.readouterr().err
    assert "uploaded first" in err and "on this machine" not in err
