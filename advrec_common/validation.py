"""Pydantic validation errors as advrec problems: every mistake at once, each with its spec path."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from advrec_common.errors import InvalidInput, invalid

M = TypeVar("M", bound=BaseModel)


def loc_path(parts: Iterable[Any], root: str = "") -> str:
    """``("attacks", 0, "params", "cw_steps")`` -> ``attacks[0].params.cw_steps`` (prefixed by ``root``)."""
    out = root
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union[", "union[")):  # pydantic's internal loc steps
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


# a fraction written as text (YAML reads `8/255` as a string): budgets are already in /255 units
_OVER_255 = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*/\s*255(?:\.0*)?\s*$")


def _message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return "unknown field (check its spelling)"
    if err.get("type") == "missing":
        return "required field is missing"
    given = err.get("input")
    if err.get("type") == "float_parsing" and isinstance(given, str) and (over := _OVER_255.match(given)):
        return (f"{given!r} is text, not a number: budgets are already in /255 units, so {given} is written "
                f"{float(over.group(1)):g}")
    return msg


def validation_problems(exc: ValidationError, root: str = "") -> list[tuple[str, str]]:
    """Every error of a pydantic ``ValidationError`` as ``(spec path, message)``."""
    return [(loc_path(e.get("loc", ()), root), _message(e)) for e in exc.errors()]


def validate_model(model: type[M], data: Any, *, root: str = "", what: str = "invalid input") -> M:
    """``model.model_validate(data)``, or one :class:`InvalidInput` listing every problem with its path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(validation_problems(exc, root), what) from None


__all__ = ["InvalidInput", "loc_path", "validate_model", "validation_problems"]
