"""API keys and ownership: clients send ``X-API-Key``; the settings hold SHA-256 digests of the
accepted keys (:mod:`advrec_common.apikeys`). Missing key -> 401, unknown key -> 403.

Every job and dataset records the owner id of the key that created it (:func:`owner_id`); a key
sees, downloads and cancels only its own (another key's id answers 404, as an unknown one), except
an admin key (``ADVREC_ADMIN_KEY_HASHES``), which sees everything.

Every key is rate limited (:class:`RateLimiter`, a token bucket per owner in the gateway process):
``requests_per_minute`` (``quota_requests_per_minute`` or the key's ``key_quotas`` entry), in bursts of
up to a tenth of it; above it a request answers 429 with ``Retry-After`` before it does any work.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from advrec_common.apikeys import key_accepted, owner_id
from advrec_common.errors import Forbidden, QuotaExceeded, Unauthorized
from advrec_common.settings import Settings
from gateway.deps import get_app_settings

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="A gateway API key.")


@dataclass(frozen=True)
class Caller:
    """Who sends the request: the owner id of its key, and whether the key is an admin key."""

    owner: str
    admin: bool = False

    def may_see(self, owners: Any) -> bool:
        """True for an admin, or when ``owners`` (one owner id or a list of them) includes this caller."""
        if self.admin:
            return True
        return self.owner in owners if isinstance(owners, list | tuple | set) else owners == self.owner


class RateLimiter:
    """Token buckets per owner: ``per_minute`` tokens a minute, at most ``max(1, per_minute // 10)`` saved."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, owner: str, per_minute: int) -> float:
        """0 when a request of ``owner`` may go now (one token taken), else the seconds until it may."""
        rate, burst = per_minute / 60.0, max(1.0, per_minute / 10.0)
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(owner, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[owner] = (tokens - 1.0, now)
                return 0.0
            self._buckets[owner] = (tokens, now)
            return (1.0 - tokens) / rate


def rate_limiter(request: Request) -> RateLimiter:
    state = request.app.state
    if getattr(state, "rate_limiter", None) is None:
        state.rate_limiter = RateLimiter()
    return state.rate_limiter


def require_api_key(
    request: Request, key: str | None = Security(API_KEY_HEADER), settings: Settings = Depends(get_app_settings)
) -> Caller:
    """Dependency of every protected route: 401 without a key, 403 with a wrong one, 429 (with
    Retry-After) above the key's request rate; else the caller."""
    if not key:
        raise Unauthorized("missing X-API-Key header")
    admin = bool(settings.admin_key_hashes) and key_accepted(key, settings.admin_key_hashes)
    if not admin and not key_accepted(key, settings.api_key_hashes):
        raise Forbidden("invalid API key")
    caller = Caller(owner=owner_id(key), admin=admin)
    if getattr(request.state, "rate_checked", None) != caller.owner:  # once per request (several deps use this)
        request.state.rate_checked = caller.owner
        per_minute = settings.quotas(caller.owner).requests_per_minute or settings.quota_requests_per_minute
        wait = rate_limiter(request).take(caller.owner, per_minute)
        if wait > 0:
            exc = QuotaExceeded(f"this key sent more than {per_minute} requests a minute "
                                f"({settings.quota_source(caller.owner, 'requests_per_minute')}); retry in "
                                f"{math.ceil(wait)} s")
            exc.retry_after_s = max(1, math.ceil(wait))  # type: ignore[misc]
            raise exc
    return caller
