"""Attack catalog items once and keep the result in the artifact store (reused when present).

Key = ``artifact_key("attack", {spec, delivery, jpeg_quality, target, images_sha256, item_ids,
target_features_sha256}, [model_key])``; the artifact's format is
:func:`services.attacker.artifacts.write_stored_attack`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore, artifact_key
from advrec_common.vision.model import ImageModel
from services.attacker.artifacts import load_attack, write_stored_attack
from services.attacker.core import attack_and_measure
from services.attacker.delivery import DELIVERIES, to_u8
from services.attacker.spec import METHODS, AttackSpec

RUNNER_VERSION = "2"  # bump when the stored format or the measurements change


def _check(images_u8: np.ndarray, item_ids: list[str], model: ImageModel, target: int, delivery: str) -> None:
    if not isinstance(images_u8, np.ndarray) or images_u8.dtype != np.uint8 or images_u8.ndim != 4 or images_u8.shape[-1] != 3:
        shape = getattr(images_u8, "shape", None)
        raise InvalidInput(f"images_u8 must be an (N,H,W,3) uint8 array, got {shape} {getattr(images_u8, 'dtype', '')}")
    if images_u8.shape[0] == 0:
        raise InvalidInput("empty batch: no images to attack")
    if len(item_ids) != images_u8.shape[0]:
        raise InvalidInput(f"{len(item_ids)} item ids for {images_u8.shape[0]} images")
    if len(set(item_ids)) != len(item_ids):
        raise InvalidInput("item ids are not unique")
    if not isinstance(target, int | np.integer) or not 0 <= int(target) < model.num_classes:
        raise InvalidInput(f"target must be a class index in [0,{model.num_classes}), got {target!r}")
    if delivery not in DELIVERIES:
        raise InvalidInput(f"unknown delivery {delivery!r}; known: {sorted(DELIVERIES)}")


def attack_items(
    store: ArtifactStore,
    model: ImageModel,
    model_key: str,
    images_u8: np.ndarray,
    item_ids: list[str],
    spec: AttackSpec,
    target: int,
    delivery: str = "png8",
    jpeg_quality: int = 90,
    device: str = "cpu",
    batch_size: int = 64,
    *,
    save_pngs: bool = True,
    target_features: np.ndarray | None = None,
    lpips_weights: Path | None = None,
) -> str:
    """Attack ``images_u8`` (N,H,W,3) uint8 toward class ``target``; returns the artifact key (reused if stored)."""
    _check(images_u8, item_ids, model, target, delivery)
    if not METHODS[spec.method].needs_labels and spec.method != "feature_match":
        raise InvalidInput(f"attack {spec.method!r} needs a score function and cannot be stored by the runner")
    if spec.method == "feature_match" and target_features is None:
        raise InvalidInput("feature_match needs target_features (M,D) or (D,)")
    tf_digest = None if target_features is None else hashlib.sha256(np.ascontiguousarray(target_features, np.float32).tobytes()).hexdigest()
    params = {
        "spec": spec.model_dump(mode="json"),
        "delivery": delivery,
        "jpeg_quality": int(jpeg_quality) if delivery == "jpeg" else None,
        "target": int(target),
        "images_sha256": hashlib.sha256(np.ascontiguousarray(images_u8).tobytes()).hexdigest(),
        "images_shape": list(images_u8.shape),
        "item_ids": list(item_ids),
        "target_features_sha256": tf_digest,
    }
    key = artifact_key("attack", params, [model_key], version=RUNNER_VERSION)
    if store.has(key):
        return key

    clean = torch.from_numpy(images_u8.astype(np.float32)).permute(0, 3, 1, 2) / 255.0
    extra = {} if target_features is None else {"target_features": torch.as_tensor(target_features, dtype=torch.float32)}
    out = attack_and_measure(model, clean, spec, int(target), delivery, jpeg_quality, device=device,
                             batch_size=batch_size, item_ids=list(item_ids), lpips_weights=lpips_weights, **extra)
    delivered, m, feats = out.delivered, out.measurement, out.features
    summary = {
        **m.summary(),
        "method": spec.method,
        "label": spec.label(),
        "eps": spec.eps,
        "norm": spec.norm,
        "budget_space": spec.budget_space,
        "delivery": delivery,
        "target": int(target),
        "target_name": model.class_names[int(target)],
        "model_key": model_key,
    }
    rows = m.to_table()
    meta = {"step": "attack", "kind": "attack", **{k: params[k] for k in ("spec", "delivery", "target")},
            "model_key": model_key, "n": len(rows)}
    nhwc = delivered.permute(0, 2, 3, 1).numpy() if delivery == "float" else to_u8(delivered)
    with store.writing(key, meta) as d:
        write_stored_attack(d, nhwc, item_ids, feats.float().numpy(), rows, summary, delivery, save_pngs)
    return key


__all__ = ["RUNNER_VERSION", "attack_items", "load_attack"]
