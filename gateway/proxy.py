"""``/v1/{extractor,attacker,recommender}/...``: the gateway forwards to the internal services.

Each request is forwarded with httpx to ``<service url>/v1/<path>`` (service URLs from the
settings), without the client's API key and with the stack's ``X-Internal-Token`` (the services
answer no one else; a client-sent token is dropped). Connection failures are retried by the transport, and
only for idempotent methods (a POST that reached a service must not run twice). A service that
is down answers 503, a timeout 504, any other transport failure 502 -- never 500.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Request, Response

from advrec_common.errors import AdvrecError, Unavailable
from advrec_common.http import error_response, error_responses, problem_response
from advrec_common.settings import Settings
from gateway.auth import require_api_key
from gateway.deps import get_app_settings

SERVICES: dict[str, str] = {"extractor": "extractor_url", "attacker": "attacker_url", "recommender": "recommender_url"}
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length", "x-api-key", "x-internal-token"}
TIMEOUT = httpx.Timeout(connect=3.0, read=300.0, write=60.0, pool=10.0)
RETRIES = 2


class ProxyClients:
    """Two pooled clients: with transport retries (idempotent methods) and without."""

    def __init__(self) -> None:
        self.retrying = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=RETRIES), timeout=TIMEOUT)
        self.single = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0), timeout=TIMEOUT)

    def for_method(self, method: str) -> httpx.AsyncClient:
        return self.retrying if method.upper() in IDEMPOTENT else self.single

    async def aclose(self) -> None:
        await self.retrying.aclose()
        await self.single.aclose()


async def forward(request: Request, base_url: str, path: str, token: str = "") -> Response:
    """Send ``request`` to ``base_url/v1/path`` and relay the answer (errors -> 502/503/504)."""
    clients: ProxyClients = request.app.state.proxy
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    if token:
        headers["X-Internal-Token"] = token
    # the path arrives decoded: encode it again (control characters, spaces, '?', '#' stay in the path)
    url = f"{base_url.rstrip('/')}/v1/{quote(path, safe='/')}"
    try:
        upstream = await clients.for_method(request.method).request(
            request.method, url, params=request.query_params, headers=headers, content=await request.body())
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
        return error_response(AdvrecError(f"cannot forward this request: {exc}"), request.url.path)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        return error_response(Unavailable(f"the service is unavailable ({type(exc).__name__}); retry later"),
                              request.url.path)
    except httpx.TimeoutException:
        return problem_response(504, "Gateway timeout", "the service timed out", "urn:advrec:problem:gateway-timeout",
                                request.url.path)
    except httpx.HTTPError as exc:
        return problem_response(502, "Bad gateway", f"bad answer from the service ({type(exc).__name__})",
                                "urn:advrec:problem:bad-gateway", request.url.path)
    keep = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
    return Response(upstream.content, upstream.status_code, headers=keep)


def _route(service: str, url_field: str):
    async def proxy(path: str, request: Request, settings: Settings = Depends(get_app_settings)) -> Response:
        return await forward(request, getattr(settings, url_field), path, settings.internal_token)

    proxy.__name__ = f"proxy_{service}"
    proxy.__doc__ = f"Forwarded to the {service} service's `/v1/{{path}}` (see its own OpenAPI docs)."
    return proxy


# the service's own answers pass through (see its OpenAPI); 502/503/504 are the proxy's
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)],
                   responses=error_responses(400, 401, 403, 404, 405, 409, 413, 422, 429, 502, 503, 504))
for _service, _field in SERVICES.items():
    for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):  # one route per method: unique operation ids
        router.add_api_route(f"/{_service}/{{path:path}}", _route(_service, _field), methods=[_method],
                             name=f"proxy_{_service}_{_method.lower()}", tags=[f"{_service} (proxy)"],
                             summary=f"{_method} to the {_service} service")
