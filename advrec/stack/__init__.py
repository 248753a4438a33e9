"""Launching the service stack on one machine (``advrec stack up|down|status|restart``)."""

from typing import Any

__all__ = ["Stack", "StackConfig"]


def __getattr__(name: str) -> Any:
    # lazy: `python -m advrec.stack.supervisor` must not import the launcher (nor itself twice)
    if name in __all__:
        from advrec.stack import launcher

        return getattr(launcher, name)
    raise AttributeError(name)
