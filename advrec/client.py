"""Python clients of the advrec gateway: :class:`AdvrecClient` (sync) and :class:`AsyncAdvrecClient`.

Both share one request-building core (:class:`_Requests`): each API call is described once as a
:class:`Call` (method, path, body) and its response decoded once (:func:`_decode`); the two
classes only differ in how they send. Timeouts and connection retries are configured on the
httpx transport, never per call; retries apply to connection failures only, so a submitted job
is never submitted twice.

Errors: 404 -> :class:`NotFound`, 422 -> :class:`InvalidInput`, anything else >= 400 ->
:class:`ApiError` (with ``status_code``); no answer at all -> :class:`GatewayUnreachable`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from advrec_common.errors import (
    AdvrecError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
)

TERMINAL = {"done", "failed", "cancelled"}
DEFAULT_TIMEOUT = 30.0
CONNECT_RETRIES = 3

ProgressCallback = Callable[[dict[str, Any]], None]


class ApiError(AdvrecError):
    """The gateway answered with an error status that has no more specific type (``status_code``)."""

    def __init__(self, status_code: int, detail: str, problems: list[dict[str, Any]] | None = None):
        super().__init__(f"HTTP {status_code}: {detail}", problems=problems)
        self.status_code = status_code


class GatewayUnreachable(Unavailable):
    """No HTTP answer at all (connection refused, DNS, timeout) after the transport's retries."""


# problem-details statuses -> the typed error the client raises (the server's hierarchy)
_ERRORS: dict[int, type[AdvrecError]] = {c.status: c for c in (
    InvalidInput, NotFound, Unauthorized, Forbidden, Conflict, PayloadTooLarge, QuotaExceeded, Unavailable)}


class JobFailed(AdvrecError):
    """``wait`` saw the job end in ``failed`` or ``cancelled``."""


@dataclass(frozen=True)
class Call:
    """One HTTP request to the gateway, independent of sync/async sending."""

    method: str
    path: str
    json: Any = None
    files: Any = None
    expect: str = "json"  # "json" | "bytes"
    params: dict[str, Any] = field(default_factory=dict)


def _problem(resp: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    """(detail, problems) of an error answer (RFC 9457 body; plain text tolerated)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase, []
    if not isinstance(body, dict):
        return str(body), []
    problems = body.get("errors") if isinstance(body.get("errors"), list) else []
    return str(body.get("detail", body)), [p for p in problems if isinstance(p, dict)]


def _decode(call: Call, resp: httpx.Response) -> Any:
    """The typed error of an error answer (with every listed problem), else the decoded body."""
    if resp.status_code >= 400:
        detail, problems = _problem(resp)
        cls = _ERRORS.get(resp.status_code)
        if cls is None:
            raise ApiError(resp.status_code, detail, problems)
        raise cls(detail, problems=problems)
    return resp.content if call.expect == "bytes" else resp.json()


def _dataset_files(path: str | Path | None, images: list[str | Path] | None,
                   interactions: str | Path | None, categories: str | Path | None) -> list[tuple[str, tuple]]:
    files: list[tuple[str, tuple]] = []
    if path is not None:
        p = Path(path)
        files.append(("archive", (p.name, p.read_bytes(), "application/zip")))
    for img in images or []:
        files.append(("images", (Path(img).name, Path(img).read_bytes(), "application/octet-stream")))
    for name, f in (("interactions", interactions), ("categories", categories)):
        if f is not None:
            files.append((name, (Path(f).name, Path(f).read_bytes(), "text/csv")))
    if not files:
        raise InvalidInput("give a zip archive, or images and an interactions file")
    return files


class _Requests:
    """The request-building core shared by both clients."""

    @staticmethod
    def submit(spec: dict[str, Any] | None = None, preset: str | None = None, **overrides: Any) -> Call:
        if (spec is None) == (preset is None):
            raise InvalidInput("give exactly one of spec or preset")
        body = dict(spec) if spec is not None else {"preset": preset}
        body.update(overrides)
        return Call("POST", "/v1/jobs", json=body)

    @staticmethod
    def status(job_id: str) -> Call:
        return Call("GET", f"/v1/jobs/{job_id}")

    @staticmethod
    def list_jobs() -> Call:
        return Call("GET", "/v1/jobs")

    @staticmethod
    def results(job_id: str) -> Call:
        return Call("GET", f"/v1/jobs/{job_id}/results")

    @staticmethod
    def report(job_id: str) -> Call:
        return Call("GET", f"/v1/jobs/{job_id}/report", expect="bytes")

    @staticmethod
    def artifact(job_id: str, path: str) -> Call:
        return Call("GET", f"/v1/jobs/{job_id}/artifacts/{path}", expect="bytes")

    @staticmethod
    def cancel(job_id: str) -> Call:
        return Call("DELETE", f"/v1/jobs/{job_id}")

    @staticmethod
    def upload_dataset(path: str | Path | None = None, images: list[str | Path] | None = None,
                       interactions: str | Path | None = None, categories: str | Path | None = None) -> Call:
        return Call("POST", "/v1/datasets", files=_dataset_files(path, images, interactions, categories))

    @staticmethod
    def list_datasets() -> Call:
        return Call("GET", "/v1/datasets")

    @staticmethod
    def dataset(dataset_id: str) -> Call:
        return Call("GET", f"/v1/datasets/{dataset_id}")


def _unreachable(http: httpx.Client | httpx.AsyncClient, exc: Exception) -> GatewayUnreachable:
    return GatewayUnreachable(f"cannot reach the gateway at {http.base_url}: {type(exc).__name__}: {exc}")


def _client_kwargs(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"X-API-Key": api_key} if api_key else {}
    return {"base_url": base_url.rstrip("/"), "headers": headers, "timeout": httpx.Timeout(timeout, connect=5.0)}


def _check_wait(status: dict[str, Any], raise_on_failure: bool) -> bool:
    if status["state"] in TERMINAL:
        if raise_on_failure and status["state"] != "done":
            raise JobFailed(f"job {status['id']} {status['state']}: {status.get('error') or ''}".strip())
        return True
    return False


class AdvrecClient:
    """Synchronous client: ``AdvrecClient("http://127.0.0.1:8000", api_key="...")``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(transport=transport or httpx.HTTPTransport(retries=CONNECT_RETRIES),
                                  **_client_kwargs(base_url, api_key, timeout))

    def _do(self, call: Call) -> Any:
        try:
            resp = self._http.request(call.method, call.path, json=call.json, files=call.files, params=call.params)
        except httpx.TransportError as exc:
            raise _unreachable(self._http, exc) from None
        return _decode(call, resp)

    def __enter__(self) -> AdvrecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(self, spec: dict[str, Any] | None = None, preset: str | None = None, **overrides: Any) -> str:
        """Submit a spec dict (or a preset with top-level overrides); returns the job id."""
        return self._do(_Requests.submit(spec, preset, **overrides))["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        return self._do(_Requests.status(job_id))

    def list_jobs(self) -> list[dict[str, Any]]:
        return self._do(_Requests.list_jobs())

    def wait(self, job_id: str, progress: ProgressCallback | None = None, poll_interval: float = 1.0,
             timeout: float | None = None, raise_on_failure: bool = True) -> dict[str, Any]:
        """Poll until the job is terminal (calling ``progress(status)`` each poll); returns the status.

        Raises TimeoutError after ``timeout`` seconds, JobFailed if it failed/was cancelled.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(job_id)
            if progress:
                progress(st)
            if _check_wait(st, raise_on_failure):
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {st['state']} after {timeout} s")
            time.sleep(poll_interval)

    def results(self, job_id: str) -> dict[str, Any]:
        return self._do(_Requests.results(job_id))

    def report(self, job_id: str, path: str | Path) -> Path:
        """Save the job's report.html to ``path``; returns it."""
        out = Path(path)
        out.write_bytes(self._do(_Requests.report(job_id)))
        return out

    def artifact(self, job_id: str, name: str) -> bytes:
        return self._do(_Requests.artifact(job_id, name))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._do(_Requests.cancel(job_id))

    def upload_dataset(self, path: str | Path | None = None, *, images: list[str | Path] | None = None,
                       interactions: str | Path | None = None, categories: str | Path | None = None) -> dict[str, Any]:
        """Upload a zip (``path``) or separate files; returns the dataset info (with its spec block)."""
        return self._do(_Requests.upload_dataset(path, images, interactions, categories))

    def list_datasets(self) -> list[dict[str, Any]]:
        return self._do(_Requests.list_datasets())

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._do(_Requests.dataset(dataset_id))


class AsyncAdvrecClient:
    """Asynchronous twin of :class:`AdvrecClient` (same methods, awaitable)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None):
        self._http = httpx.AsyncClient(transport=transport or httpx.AsyncHTTPTransport(retries=CONNECT_RETRIES),
                                       **_client_kwargs(base_url, api_key, timeout))

    async def _do(self, call: Call) -> Any:
        try:
            resp = await self._http.request(call.method, call.path, json=call.json, files=call.files,
                                            params=call.params)
        except httpx.TransportError as exc:
            raise _unreachable(self._http, exc) from None
        return _decode(call, resp)

    async def __aenter__(self) -> AsyncAdvrecClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, spec: dict[str, Any] | None = None, preset: str | None = None, **overrides: Any) -> str:
        return (await self._do(_Requests.submit(spec, preset, **overrides)))["id"]

    async def status(self, job_id: str) -> dict[str, Any]:
        return await self._do(_Requests.status(job_id))

    async def list_jobs(self) -> list[dict[str, Any]]:
        return await self._do(_Requests.list_jobs())

    async def wait(self, job_id: str, progress: ProgressCallback | None = None, poll_interval: float = 1.0,
                   timeout: float | None = None, raise_on_failure: bool = True) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = await self.status(job_id)
            if progress:
                progress(st)
            if _check_wait(st, raise_on_failure):
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {st['state']} after {timeout} s")
            await asyncio.sleep(poll_interval)

    async def results(self, job_id: str) -> dict[str, Any]:
        return await self._do(_Requests.results(job_id))

    async def report(self, job_id: str, path: str | Path) -> Path:
        out = Path(path)
        out.write_bytes(await self._do(_Requests.report(job_id)))
        return out

    async def artifact(self, job_id: str, name: str) -> bytes:
        return await self._do(_Requests.artifact(job_id, name))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._do(_Requests.cancel(job_id))

    async def upload_dataset(self, path: str | Path | None = None, *, images: list[str | Path] | None = None,
                             interactions: str | Path | None = None,
                             categories: str | Path | None = None) -> dict[str, Any]:
        return await self._do(_Requests.upload_dataset(path, images, interactions, categories))

    async def list_datasets(self) -> list[dict[str, Any]]:
        return await self._do(_Requests.list_datasets())

    async def dataset(self, dataset_id: str) -> dict[str, Any]:
        return await self._do(_Requests.dataset(dataset_id))
