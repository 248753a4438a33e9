"""API keys: clients send ``X-API-Key``; the settings hold SHA-256 digests of the accepted keys
(:mod:`advrec_common.apikeys`). Missing key -> 401, unknown key -> 403."""

from __future__ import annotations

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader

from advrec_common.apikeys import key_accepted
from advrec_common.errors import Forbidden, Unauthorized
from advrec_common.settings import Settings
from gateway.deps import get_app_settings

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="A gateway API key.")


def require_api_key(
    key: str | None = Security(API_KEY_HEADER), settings: Settings = Depends(get_app_settings)
) -> None:
    """Dependency of every protected route: 401 without a key, 403 with a wrong one."""
    if not key:
        raise Unauthorized("missing X-API-Key header")
    if not key_accepted(key, settings.api_key_hashes):
        raise Forbidden("invalid API key")
