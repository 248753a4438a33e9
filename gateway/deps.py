"""Dependencies every router receives by injection: the settings of the app (never a global)."""

from __future__ import annotations

from fastapi import Request

from advrec_common.settings import Settings


def get_app_settings(request: Request) -> Settings:
    """The :class:`Settings` the app was created with (``create_app(settings)``)."""
    return request.app.state.settings
