"""The ``extractor`` artifact: a feature extractor that the extractor, attacker and recommender use.

Written by the extractor domain, read by every service, so its format lives here. Files:
``extractor.json`` (source, backbone, class names, feature dim, input size, training report, and
``model_key`` when the model file lives in another artifact, e.g. a demo extractor trained once and
shared) and ``model.pt`` (advrec's model file, :mod:`advrec_common.vision.model_file`) unless
``model_key`` points elsewhere.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from advrec_common.store import ArtifactStore
from advrec_common.vision.model import ImageModel
from advrec_common.vision.model_file import load_model_file, save_model_file

INFO_FILE, MODEL_FILE = "extractor.json", "model.pt"


def write_extractor_artifact(out: Path, model: ImageModel, source: str, report: dict[str, Any] | None = None,
                             model_key: str | None = None) -> dict[str, Any]:
    """Fill an ``extractor`` artifact directory (the model file is written unless ``model_key``
    names the artifact that already holds it); returns the info document."""
    info: dict[str, Any] = {"source": source}
    if model_key is not None:
        info["model_key"] = model_key
    else:
        save_model_file(model, out / MODEL_FILE)
    info.update(report=report, backbone=model.backbone, class_names=list(model.class_names),
                feature_dim=model.feature_dim, input_size=model.input_size)
    (out / INFO_FILE).write_text(json.dumps(info, indent=1))
    return info


def extractor_info(store: ArtifactStore, key: str) -> dict[str, Any]:
    """``extractor.json`` of an extractor artifact."""
    return json.loads((store.open(key) / INFO_FILE).read_text())


@lru_cache(maxsize=8)
def _cached(root: str, key: str) -> ImageModel:
    store = ArtifactStore(root)
    info = extractor_info(store, key)
    home = store.open(info["model_key"]) if info.get("model_key") else store.open(key)
    return load_model_file(home / MODEL_FILE, backbone=info["backbone"])


def load_extractor_artifact(store: ArtifactStore, key: str) -> ImageModel:
    """The :class:`ImageModel` of an extractor artifact (eval mode, CPU; cached per store and key —
    callers that move it to another device must move it back)."""
    return _cached(str(store.root), key)
