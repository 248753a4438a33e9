"""The ``defense`` artifact: one defense of the ladder, fitted where it needs fitting.

Written by the extractor domain (which fits the denoiser and the detector:
:func:`services.extractor.artifacts.write_fitted_defense`), read by the extractor (screening,
features behind the defense) and the attacker (the adaptive attacker's composed model), so its
format lives here, like the extractor artifact's. Files: ``defense.json`` (``format``, ``kind``,
``label``, ``params`` -- the spec entry's resolved fields --, ``config`` -- what rebuilds the module
--, ``extractor`` -- the key of the extractor it was fitted with, or None --, ``report``) and
``weights.pt`` (the module's state dict) when the module has weights (the denoiser).
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from advrec_common.errors import BadCheckpoint, InvalidInput
from advrec_common.store import ArtifactStore, atomic_write
from advrec_common.vision.checkpoint import check_finite, is_state_dict, load_strict, read_checkpoint
from advrec_common.vision.defenses.base import Defense
from advrec_common.vision.defenses.registry import defense_class
from advrec_common.vision.defenses.spec import DefenseSpec

FORMAT = "advrec-defense-1"
INFO_FILE, WEIGHTS_FILE = "defense.json", "weights.pt"
# kinds whose fitted state only holds for the extractor it was fitted with (a threshold on its softmax)
BOUND_TO_EXTRACTOR = ("detector",)


def write_defense_artifact(out: Path, defense: Defense, spec: DefenseSpec, report: dict[str, Any] | None = None,
                           extractor: str | None = None) -> dict[str, Any]:
    """Fill a ``defense`` artifact directory with ``defense`` (built from ``spec``, fitted if its kind
    needs it); returns the info document."""
    if defense.kind != spec.kind:
        raise InvalidInput(f"a {defense.kind!r} module cannot be stored as a {spec.kind!r} defense")
    sd = {k: v.detach().cpu().clone() for k, v in defense.state_dict().items()}
    if sd:
        check_finite(sd, f"defense {spec.label()} to save")
        buf = io.BytesIO()
        torch.save(sd, buf)
        atomic_write(Path(out) / WEIGHTS_FILE, buf.getvalue(), fsync=True)
    info = {"format": FORMAT, "kind": spec.kind, "label": spec.label(), "params": spec.params(),
            "config": defense.config(), "extractor": extractor, "report": dict(report or {})}
    atomic_write(Path(out) / INFO_FILE, json.dumps(info, indent=1), fsync=True)
    return info


def read_defense_info(directory: Path) -> dict[str, Any]:
    """``defense.json`` of a defense artifact directory (BadCheckpoint when it is not one)."""
    path = Path(directory) / INFO_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadCheckpoint(f"{path}: not a defense artifact ({type(exc).__name__})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise BadCheckpoint(f"{path}: not a defense artifact of format {FORMAT!r}")
    return info


def load_defense(directory: Path) -> Defense:
    """The fitted :class:`Defense` of an artifact directory (eval mode, CPU)."""
    info = read_defense_info(directory)
    where = f"defense artifact {directory}"
    try:
        defense = defense_class(info["kind"])(**info["config"])
    except (TypeError, KeyError) as exc:
        raise BadCheckpoint(f"{where}: its config does not rebuild a {info.get('kind')!r} defense ({exc})") from None
    expected = defense.state_dict()
    if expected:
        sd = read_checkpoint(Path(directory) / WEIGHTS_FILE)
        if not is_state_dict(sd):
            raise BadCheckpoint(f"{where}: {WEIGHTS_FILE} is not a state dict")
        check_finite(sd, where)
        load_strict(defense, sd, where)
    return defense.eval()


@lru_cache(maxsize=8)
def _cached(root: str, key: str) -> Defense:
    return load_defense(ArtifactStore(root).open(key))


def defense_info(store: ArtifactStore, key: str) -> dict[str, Any]:
    """``defense.json`` of the defense artifact ``key``."""
    return read_defense_info(store.open(key))


def load_defense_artifact(store: ArtifactStore, key: str, extractor: str | None = None) -> Defense:
    """The :class:`Defense` of artifact ``key`` (eval mode, CPU; cached per store and key -- callers that
    move it must move it back). ``extractor``: the extractor it will sit in front of; InvalidInput
    when the defense was fitted for another one and only holds for that one (a detector's threshold)."""
    info = defense_info(store, key)
    if extractor is not None and info["kind"] in BOUND_TO_EXTRACTOR and info.get("extractor") not in (None, extractor):
        raise InvalidInput(f"defense {key} ({info['label']}) was fitted for extractor {info['extractor']}, not "
                           f"{extractor}: its threshold holds for that extractor's softmax only")
    return _cached(str(store.root), key)
