"""Reading checkpoint files safely: sniffed before unpickling, ``weights_only=True``, strict key checks.

Files are sniffed so an HTML quota page saved as ``.pt`` (robustbench#158) gets a precise message;
``torch.load`` always runs with ``weights_only=True``; loading is strict because
``strict=False`` silently loads nothing (robustness#73): any missing or unexpected key, a shape
mismatch or a non-finite tensor raises :class:`BadCheckpoint` naming a few of the offending keys.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrec_common.errors import BadCheckpoint, NotFound


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def few_keys(keys: Sequence[str], n: int = 4) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {few_keys([str(k) for k in obj.keys()])}"
    return f"a {type(obj).__name__}"


def sniff_checkpoint(path: Path) -> str:
    """'zip' (torch >= 1.6) or 'legacy' (pickle) for a plausible checkpoint; BadCheckpoint otherwise."""
    if not path.is_file():
        raise NotFound(f"checkpoint file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(512)
    text = head.lstrip().lower()
    if not head:
        raise BadCheckpoint(f"{path} is empty")
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise BadCheckpoint(f"{path} starts like a zip checkpoint but is truncated or corrupt")
        return "zip"
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return "legacy"
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        raise BadCheckpoint(
            f"{path} is an HTML/XML page, not a checkpoint (often a download quota or login page saved "
            "under the checkpoint's name); download the file again"
        )
    if text.startswith((b"{", b"[")):
        raise BadCheckpoint(f"{path} is a JSON document, not a checkpoint")
    if len(head) >= 10 and head[8:10] == b'{"':
        raise BadCheckpoint(f"{path} is a safetensors file; this loader reads torch checkpoints (.pt/.pth)")
    raise BadCheckpoint(f"{path} is not a torch checkpoint (unrecognised leading bytes {head[:8]!r})")


def read_checkpoint(path: str | Path) -> Any:
    """Unpickle a checkpoint with ``weights_only=True`` on CPU after sniffing it."""
    path = Path(path)
    kind = sniff_checkpoint(path)
    try:
        # MultiStepLR's state (Madry 'schedule' entries) holds a collections.Counter (pytorch#98921)
        with torch.serialization.safe_globals([collections.Counter]):
            return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        hint = " (legacy pickle: dill-era files must be converted once with a trusted, offline script)" if (
            kind == "legacy"
        ) else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadCheckpoint(f"cannot read checkpoint {path}: {first}{hint}") from None


def check_finite(sd: Mapping[str, torch.Tensor], where: str) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise BadCheckpoint(f"{where}: non-finite values (NaN/inf) in {few_keys(bad)}")


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) such as {few_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {few_keys(unexpected)}")
        raise BadCheckpoint(f"{where}: " + "; ".join(parts))
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if sd[k].shape != v.shape]
    if shapes:
        raise BadCheckpoint(f"{where}: shape mismatch in {few_keys(shapes)}")
    module.load_state_dict(sd, strict=True)
