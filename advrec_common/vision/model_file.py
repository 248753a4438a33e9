"""advrec's own model file (format ``advrec-extractor-1``): an :class:`ImageModel` and what rebuilds it.

One ``torch.save`` dict: ``format``, ``backbone``, ``class_names``, ``mean``, ``std``,
``input_size``, ``state_dict`` (the ImageModel's own keys) and an optional ``train_report``. Read
with ``weights_only=True`` and a strict key check; written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from advrec_common.errors import BadCheckpoint, InvalidInput
from advrec_common.store import atomic_write
from advrec_common.vision.backbones import build_model
from advrec_common.vision.checkpoint import check_finite, is_state_dict, load_strict, read_checkpoint
from advrec_common.vision.model import ImageModel

ADVREC_FORMAT = "advrec-extractor-1"
_FIELDS = ("backbone", "class_names", "mean", "std", "state_dict")


def is_model_file_document(obj: Any) -> bool:
    """True for a loaded checkpoint object in advrec's own format."""
    return isinstance(obj, Mapping) and obj.get("format") == ADVREC_FORMAT


def model_from_document(obj: Mapping[str, Any], where: str, backbone: str | None = None,
                        class_names: Sequence[str] | None = None) -> ImageModel:
    """Rebuild the :class:`ImageModel` of a loaded model-file document (eval mode, CPU).

    ``backbone`` / ``class_names``, when given, must agree with the file's own.
    """
    missing = [k for k in _FIELDS if k not in obj]
    if missing:
        raise BadCheckpoint(f"{where}: missing field(s) {missing}")
    if backbone and backbone != obj["backbone"]:
        raise BadCheckpoint(f"{where}: the file holds backbone {obj['backbone']!r}, not {backbone!r}")
    names = list(obj["class_names"])
    if class_names is not None and list(class_names) != names:
        raise InvalidInput(f"{where}: class names differ from the ones stored in the checkpoint")
    sd = obj["state_dict"]
    if not is_state_dict(sd):
        raise BadCheckpoint(f"{where}: 'state_dict' is not a state dict")
    check_finite(sd, where)
    model = build_model(obj["backbone"], names, mean=tuple(obj["mean"]), std=tuple(obj["std"]),
                        input_size=obj.get("input_size"))
    load_strict(model, sd, where)
    return model.eval()


def load_model_file(path: str | Path, backbone: str | None = None,
                    class_names: Sequence[str] | None = None) -> ImageModel:
    """The :class:`ImageModel` saved at ``path`` by :func:`save_model_file`."""
    obj = read_checkpoint(path)
    if not is_model_file_document(obj):
        raise BadCheckpoint(f"{path} is not an advrec model file (format {ADVREC_FORMAT!r})")
    return model_from_document(obj, f"{path} (layout 'advrec')", backbone, class_names)


def save_model_file(model: ImageModel, path: str | Path, train_report: dict | None = None) -> Path:
    """Write ``model`` in advrec's format, atomically."""
    path = Path(path)
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    check_finite(sd, f"model to save at {path}")
    doc = {
        "format": ADVREC_FORMAT,
        "backbone": model.backbone,
        "class_names": list(model.class_names),
        "mean": [float(v) for v in model.mean.flatten()],
        "std": [float(v) for v in model.std.flatten()],
        "input_size": model.input_size,
        "state_dict": sd,
        "train_report": dict(train_report or {}),
    }
    buf = io.BytesIO()
    torch.save(doc, buf)
    return atomic_write(path, buf.getvalue(), fsync=True)


def read_train_report(path: str | Path) -> dict:
    """The ``train_report`` stored in an advrec model file ({} for other files)."""
    obj = read_checkpoint(path)
    return dict(obj.get("train_report") or {}) if is_model_file_document(obj) else {}
