"""Launching the service stack on one machine (``advrec stack up|down|status``)."""

from advrec.stack.launcher import Stack, StackConfig

__all__ = ["Stack", "StackConfig"]
