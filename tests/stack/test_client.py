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

    with AdvrecClient(f"http://127.0.0.1:{free_port()}", API_KEY, timeout=2) as c, \
            pytest.raises(GatewayUnreachable, match="cannot reach"):
        c.list_jobs()
