"""Attack catalog items once and keep the result in the artifact store (reused when present).

Key = ``artifact_key("attack", {spec, delivery, jpeg_quality, target, images_sha256, item_ids,
target_features_sha256}, [model_key])``. An artifact holds:

* ``adv_u8.npy`` (N,H,W,3) uint8 (``png8``/``jpeg``) or ``adv_float.npy`` (N,H,W,3) float32 (``float``);
* ``images/<item>.png`` for ``png8`` (``save_pngs``; unsafe item ids are hashed into the name);
* ``adv_features.npy`` (N,D) float32: the extractor's features of the delivered images;
* ``table.csv`` (one row per item, :meth:`AttackMeasurement.to_table`) and ``summary.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore, artifact_key
from services.attacker.attacks import ATTACKS, run_attack
from services.attacker.budget import budget_for
from services.attacker.delivery import DELIVERIES, deliver, to_u8
from services.attacker.measurements import measure_attack
from services.attacker.spec import AttackSpec
from services.extractor.backbones import ImageModel

RUNNER_VERSION = "2"  # bump when the stored format or the measurements change
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_STRING_COLUMNS = {"item", "clean_class_name", "adv_class_name"}


@dataclass
class AttackArtifact:
    """A stored attack: delivered images (uint8 or float32 NHWC), features, per-item rows, summary."""

    key: str
    item_ids: list[str]
    images: np.ndarray
    adv_features: np.ndarray
    table: list[dict[str, Any]]
    summary: dict[str, Any]
    path: Path


def png_name(item_id: str) -> str:
    """File name for an item's PNG: the id when it is a safe file name, else a hash of it."""
    return f"{item_id}.png" if _SAFE_NAME.match(item_id) and item_id not in (".", "..") else (
        "id-" + hashlib.sha256(item_id.encode()).hexdigest()[:24] + ".png"
    )


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


@dataclass
class AttackOutcome:
    """delivered: (N,3,H,W) float [0,1]; features: (N,D) and spatial (N,D',h,w) | None of the delivered images."""

    delivered: torch.Tensor
    measurement: Any
    features: torch.Tensor
    spatial: torch.Tensor | None
    logits: torch.Tensor
    seconds: float


def attack_and_measure(
    model: ImageModel,
    clean: torch.Tensor,
    spec: AttackSpec,
    target: int,
    delivery: str = "png8",
    jpeg_quality: int = 90,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    clean_features: torch.Tensor | None = None,
    item_ids: list[str] | None = None,
    lpips_weights: Path | None = None,
    spatial: bool = False,
    **extra: Any,
) -> AttackOutcome:
    """Attack ``clean`` (N,3,H,W) [0,1] toward ``target``, deliver within the budget, measure, re-extract.

    The one attack core: the runner (stored attacks) and the pipeline's attack shards both call it.
    """
    t0 = time.perf_counter()
    adv = run_attack(model, clean, spec, int(target), device=device, batch_size=batch_size, **extra)
    seconds = time.perf_counter() - t0
    # projecting before rounding keeps the delivered 8-bit image within the budget
    delivered = deliver(adv, delivery, jpeg_quality, clean=clean, budget=budget_for(spec, model.std))  # type: ignore[arg-type]
    m = measure_attack(model, clean, delivered, int(target), clean_features=clean_features,
                       lpips_weights=lpips_weights, wall_time_s=seconds, item_ids=item_ids, batch_size=batch_size)
    model.eval()
    feats, maps, logits = [], [], []
    with torch.inference_mode():
        for i in range(0, delivered.shape[0], batch_size):
            o = model.forward_all(delivered[i : i + batch_size].to(model.mean.device), spatial=spatial)
            feats.append(o.features.float().cpu())
            logits.append(o.logits.float().cpu())
            if o.spatial is not None:
                maps.append(o.spatial.float().cpu())
    return AttackOutcome(delivered, m, torch.cat(feats), torch.cat(maps) if maps else None, torch.cat(logits), seconds)


def _parse_cell(column: str, value: str) -> Any:
    if column in _STRING_COLUMNS:
        return value
    if value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


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
    if ATTACKS[spec.method].needs_labels is False and spec.method != "feature_match":
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
    meta = {"step": "attack", **{k: params[k] for k in ("spec", "delivery", "target")}, "model_key": model_key, "n": len(rows)}
    with store.writing(key, meta) as d:
        if delivery == "float":
            np.save(d / "adv_float.npy", delivered.permute(0, 2, 3, 1).numpy().astype(np.float32))
        else:
            u8 = to_u8(delivered)
            np.save(d / "adv_u8.npy", u8)
            if delivery == "png8" and save_pngs:
                (d / "images").mkdir()
                for item, img in zip(item_ids, u8, strict=True):
                    Image.fromarray(img).save(d / "images" / png_name(item))
        np.save(d / "adv_features.npy", feats.float().numpy())
        with open(d / "table.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (d / "summary.json").write_text(json.dumps(summary, indent=1))
    return key


def load_attack(store: ArtifactStore, key: str) -> AttackArtifact:
    """A stored attack by key (NotFound when absent)."""
    d = store.open(key)
    name = "adv_u8.npy" if (d / "adv_u8.npy").is_file() else "adv_float.npy"
    with open(d / "table.csv", newline="") as fh:
        table = [{c: _parse_cell(c, v) for c, v in row.items()} for row in csv.DictReader(fh)]
    return AttackArtifact(
        key=key,
        item_ids=[str(r["item"]) for r in table],
        images=np.load(d / name, allow_pickle=False),
        adv_features=np.load(d / "adv_features.npy", allow_pickle=False),
        table=table,
        summary=json.loads((d / "summary.json").read_text()),
        path=d,
    )
