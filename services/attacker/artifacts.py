"""The attacker's artifact formats, written and read only here.

* ``attack`` (a stored attack, :func:`write_stored_attack` / :func:`load_attack`):
  ``adv_u8.npy`` (N,H,W,3) uint8 (``png8``/``jpeg``) or ``adv_float.npy`` (N,H,W,3) float32
  (``float``); ``images/<item>.png`` for ``png8`` (unsafe item ids hashed into the name);
  ``adv_features.npy`` (N,D) float32; ``table.csv`` (one row per item) and ``summary.json``.
* ``attack_shard`` (one catalog index range of a pipeline cell, :func:`write_shard` /
  :func:`read_shard`): ``items.npy`` (M,) catalog indices attacked, ``adv_features.npy``,
  ``adv_spatial.npy`` (optional), ``adv_classes.npy``, ``adv_probs.npy``, ``adv_images.npy``
  (uint8 NHWC, float32 for ``float`` delivery) and ``table.json`` (per-image measurements).
* ``adversarial`` (a whole cell, :func:`merge_shards` / :func:`load_adversarial`): the catalog's
  feature matrix with the attacked rows replaced (``features.npy``, ``spatial.npy``), the attacked
  ``items.npy`` with their images/classes/probabilities, ``table.json`` and ``summary.json``
  (:func:`summarize_attack_table`).
* ``promo_attack`` / ``promo_transfer`` (item promotion, :func:`write_promotion_attack`): ``items.npy``
  (N,) the promoted catalog rows, per draw ``features.npy`` (R',N,D), ``spatial.npy`` (R',N,D',h,w)
  when extracted, ``images.npy`` (R',N,H,W,3) delivered images (uint8; float32 for ``float``) --
  one draw per replicate when the attack is white-box against replicate r's recommender, else one --
  ``table.json`` (per draw and image: feature loss, perceptual distance) and ``summary.json``. Read as
  a :class:`Perturbation` by :func:`load_perturbation`, like the placebo and the oracle.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from advrec_common.datasets.images import to_uint8
from advrec_common.store import ArtifactStore

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_STRING_COLUMNS = {"item", "clean_class_name", "adv_class_name"}
_ID_COLUMNS = ("item", "clean_class", "adv_class")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- stored attacks (the runner) -------------------------------------------------------------------
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


def write_stored_attack(out: Path, delivered_nhwc: np.ndarray, item_ids: Sequence[str], features: np.ndarray,
                        rows: list[dict[str, Any]], summary: dict[str, Any], delivery: str, save_pngs: bool) -> None:
    """Fill an ``attack`` artifact directory (delivered images: uint8, or float32 for ``float``)."""
    if delivery == "float":
        np.save(out / "adv_float.npy", delivered_nhwc.astype(np.float32))
    else:
        np.save(out / "adv_u8.npy", delivered_nhwc)
        if delivery == "png8" and save_pngs:
            (out / "images").mkdir()
            for item, img in zip(item_ids, delivered_nhwc, strict=True):
                Image.fromarray(img).save(out / "images" / png_name(item))
    np.save(out / "adv_features.npy", features.astype(np.float32))
    with open(out / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _write_json(out / "summary.json", summary)


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


# -- pipeline cells: shards and their merge --------------------------------------------------------
@dataclass
class Shard:
    """The attacked items of one shard (M may be 0: then every array is None)."""

    items: np.ndarray
    table: list[dict[str, Any]]
    features: np.ndarray | None = None
    spatial: np.ndarray | None = None
    classes: np.ndarray | None = None
    probs: np.ndarray | None = None
    images: np.ndarray | None = None


def write_shard(out: Path, items: np.ndarray, outcome: Any = None, rows: list[dict[str, Any]] | None = None,
                delivery: str = "png8") -> None:
    """Fill an ``attack_shard`` directory from an :class:`~services.attacker.core.AttackOutcome`."""
    np.save(out / "items.npy", np.asarray(items, dtype=np.int64))
    if outcome is None or len(items) == 0:
        _write_json(out / "table.json", [])
        return
    np.save(out / "adv_features.npy", outcome.features.numpy())
    if outcome.spatial is not None:
        np.save(out / "adv_spatial.npy", outcome.spatial.numpy())
    probs = outcome.logits.softmax(-1)
    np.save(out / "adv_classes.npy", probs.argmax(-1).numpy().astype(np.int64))
    np.save(out / "adv_probs.npy", probs.max(-1).values.numpy().astype(np.float32))
    np.save(out / "adv_images.npy", to_uint8(outcome.delivered) if delivery != "float" else
            outcome.delivered.permute(0, 2, 3, 1).numpy())
    _write_json(out / "table.json", rows or [])


def read_shard(d: Path) -> Shard:
    """A shard directory's contents."""
    items = np.load(d / "items.npy")
    table = json.loads((d / "table.json").read_text())
    if len(items) == 0:
        return Shard(items, table)

    def opt(name: str) -> np.ndarray | None:
        return np.load(d / f"{name}.npy") if (d / f"{name}.npy").is_file() else None

    return Shard(items, table, np.load(d / "adv_features.npy"), opt("adv_spatial"), np.load(d / "adv_classes.npy"),
                 np.load(d / "adv_probs.npy"), np.load(d / "adv_images.npy"))


def summarize_attack_table(rows: list[dict[str, Any]], seconds: float, n_catalog: int) -> dict[str, Any]:
    """Means of the per-image measurements, with the success rates defined as in the report.

    ``success`` (SR, %) and ``float_success`` (SR of the float attack output before delivery, %) are
    over the *eligible* images: those not already classified as the target before the attack
    (``clean_target_rate``, %, says how many were; ``success_all`` is SR over every image). ``flipped``
    is over every image. ``n_changed`` counts images whose delivered perturbation is non-zero;
    ``all_zero`` flags a cell whose delivery erased every perturbation. Means skip infinite values:
    ``psnr`` is the mean over the changed images (an unchanged image's PSNR is infinite).
    """
    n = len(rows)
    out: dict[str, Any] = {"n_attacked": n, "n_catalog": n_catalog, "attack_seconds": seconds,
                           "images_per_s": (n / seconds) if seconds > 0 else None}
    if n == 0:
        return out
    flags = {"success", "float_success", "clean_is_target", "changed", "flipped"}
    for col in rows[0]:
        vals = [r[col] for r in rows if isinstance(r.get(col), bool | int | float) and r.get(col) is not None]
        if col in _ID_COLUMNS or col in flags or col == "target" or not vals:
            continue
        # PSNR is infinite for an unchanged image: means are over the finite values (the changed images)
        finite = [float(v) for v in vals if math.isfinite(float(v))]
        out[col] = float(np.mean(finite)) if finite else None
    eligible = [r for r in rows if r.get("clean_is_target") is not True]

    def pct(col: str, over: list[dict[str, Any]]) -> float | None:
        vals = [bool(r[col]) for r in over if r.get(col) is not None]
        return 100.0 * float(np.mean(vals)) if vals else None

    out.update(
        n_eligible=len(eligible), success=pct("success", eligible), float_success=pct("float_success", eligible),
        success_all=pct("success", rows), clean_target_rate=pct("clean_is_target", rows),
        flipped=pct("flipped", rows), n_changed=sum(1 for r in rows if r.get("changed", True)),
    )
    out["all_zero"] = out["n_changed"] == 0
    return out


def merge_shards(out: Path, clean_features: np.ndarray, clean_spatial: np.ndarray | None, shards: list[Shard],
                 seconds: float, n_catalog: int) -> None:
    """Fill an ``adversarial`` directory: clean matrices with every shard's attacked rows replaced."""
    features = np.array(clean_features, dtype=np.float32)
    spatial = None if clean_spatial is None else np.array(clean_spatial, dtype=np.float32)
    table: list[dict[str, Any]] = []
    items, images, classes, probs = [], [], [], []
    for sh in shards:
        table += sh.table
        if len(sh.items) == 0:
            continue
        items.append(sh.items)
        features[sh.items] = sh.features
        if spatial is not None and sh.spatial is not None:
            spatial[sh.items] = sh.spatial
        images.append(sh.images)
        classes.append(sh.classes)
        probs.append(sh.probs)
    np.save(out / "items.npy", np.concatenate(items) if items else np.zeros(0, dtype=np.int64))
    np.save(out / "features.npy", features)
    if spatial is not None:
        np.save(out / "spatial.npy", spatial)
    if images:
        np.save(out / "adv_images.npy", np.concatenate(images))
        np.save(out / "adv_classes.npy", np.concatenate(classes))
        np.save(out / "adv_probs.npy", np.concatenate(probs))
    _write_json(out / "table.json", table)
    _write_json(out / "summary.json", summarize_attack_table(table, seconds, n_catalog))


@dataclass
class Adversarial:
    """A cell's attacked catalog: ``features`` (I,D) / ``spatial`` with attacked rows replaced;
    ``items`` (M,) attacked catalog indices with their delivered ``images`` (M,H,W,3), ``classes`` and
    ``probs`` (None when M = 0); per-image ``table`` and its ``summary``."""

    items: np.ndarray
    features: np.ndarray
    spatial: np.ndarray | None
    images: np.ndarray | None
    classes: np.ndarray | None
    probs: np.ndarray | None
    table: list[dict[str, Any]]
    summary: dict[str, Any]

    def images_u8(self) -> np.ndarray | None:
        """Delivered images as uint8 (float deliveries rounded), or None."""
        if self.images is None or self.images.dtype == np.uint8:
            return self.images
        return np.round(np.clip(self.images, 0, 1) * 255).astype(np.uint8)


def load_adversarial(store: ArtifactStore, key: str, *, arrays: bool = True) -> Adversarial:
    """An ``adversarial`` artifact (``arrays=False``: only items, table and summary)."""
    d = store.open(key)

    def opt(name: str) -> np.ndarray | None:
        return np.load(d / f"{name}.npy", allow_pickle=False) if arrays and (d / f"{name}.npy").is_file() else None

    return Adversarial(
        items=np.load(d / "items.npy"), features=opt("features"), spatial=opt("spatial"),  # type: ignore[arg-type]
        images=opt("adv_images"), classes=opt("adv_classes"), probs=opt("adv_probs"),
        table=json.loads((d / "table.json").read_text()), summary=json.loads((d / "summary.json").read_text()),
    )


# -- controls and the one view the evaluation reads -------------------------------------------------
def write_placebo(out: Path, items: np.ndarray, features: np.ndarray, spatial: np.ndarray | None,
                  images: np.ndarray, summary: dict[str, Any]) -> None:
    """Fill a ``placebo`` directory: ``items.npy`` (M,), ``features.npy`` (R,M,D), ``spatial.npy``
    (R,M,D',h,w) when extracted, ``images.npy`` (R,M,H,W,3) and ``summary.json``."""
    np.save(out / "items.npy", np.asarray(items, dtype=np.int64))
    np.save(out / "features.npy", features.astype(np.float32))
    if spatial is not None:
        np.save(out / "spatial.npy", spatial.astype(np.float32))
    np.save(out / "images.npy", images)
    _write_json(out / "summary.json", summary)


def write_oracle(out: Path, items: np.ndarray, features: np.ndarray, spatial: np.ndarray | None,
                 summary: dict[str, Any]) -> None:
    """Fill an ``oracle`` directory: ``items.npy`` (M,), ``features.npy`` (1,M,D), ``spatial.npy``
    (1,M,D',h,w) when the catalog has spatial features, and ``summary.json``."""
    np.save(out / "items.npy", np.asarray(items, dtype=np.int64))
    np.save(out / "features.npy", features[None].astype(np.float32))
    if spatial is not None:
        np.save(out / "spatial.npy", spatial[None].astype(np.float32))
    _write_json(out / "summary.json", summary)


def write_promotion_attack(out: Path, items: np.ndarray, features: np.ndarray, spatial: np.ndarray | None,
                           images: np.ndarray, table: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Fill a ``promo_attack`` or ``promo_transfer`` directory (see the module docstring)."""
    if features.ndim != 3 or images.ndim != 5 or features.shape[:2] != images.shape[:2]:
        raise ValueError(f"expected (R',N,D) features and (R',N,H,W,3) images, got {features.shape}, {images.shape}")
    np.save(out / "items.npy", np.asarray(items, dtype=np.int64))
    np.save(out / "features.npy", features.astype(np.float32))
    if spatial is not None:
        np.save(out / "spatial.npy", spatial.astype(np.float32))
    np.save(out / "images.npy", images)
    _write_json(out / "table.json", table)
    _write_json(out / "summary.json", summary)


def load_promotion_attack(store: ArtifactStore, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(items (N,), delivered images (R',N,H,W,3) as stored, summary) of a ``promo_attack``/``promo_transfer``."""
    d = store.open(key)
    return (np.load(d / "items.npy", allow_pickle=False), np.load(d / "images.npy", allow_pickle=False),
            json.loads((d / "summary.json").read_text()))


@dataclass
class Perturbation:
    """What one evaluation cell replaces in the catalog's item side: the rows of ``items`` (M,), with,
    per draw, features (R',M,D), spatial maps (R',M,D',h,w) and images (R',M,H,W,3) uint8 (None where
    the kind has none: the oracle moves features only). Replicate r uses draw ``min(r, R'-1)``: the
    attack and the oracle have one draw, a placebo one per replicate."""

    kind: str
    items: np.ndarray
    features: np.ndarray | None
    spatial: np.ndarray | None
    images: np.ndarray | None
    summary: dict[str, Any]

    @property
    def n_draws(self) -> int:
        arrays = [a for a in (self.features, self.spatial, self.images) if a is not None]
        return int(arrays[0].shape[0]) if arrays else 1

    def draw(self, replicate: int) -> int:
        return min(int(replicate), self.n_draws - 1)


def load_perturbation(store: ArtifactStore, key: str) -> Perturbation:
    """The rows an ``adversarial``, ``placebo``, ``oracle``, ``promo_attack`` or ``promo_transfer`` artifact
    replaces (see :class:`Perturbation`)."""
    kind = store.meta(key).get("kind")
    d = store.open(key)
    if kind in ("adversarial", "transfer"):  # a transfer is a whole cell's delivered images, in this format
        adv = load_adversarial(store, key)
        idx = adv.items
        return Perturbation("attack", idx, adv.features[idx][None],
                            None if adv.spatial is None else adv.spatial[idx][None],
                            None if adv.images is None else adv.images_u8()[None], adv.summary)

    def opt(name: str) -> np.ndarray | None:
        return np.load(d / f"{name}.npy", allow_pickle=False) if (d / f"{name}.npy").is_file() else None

    images = opt("images")
    if images is not None and images.dtype != np.uint8:
        images = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    return Perturbation(str(kind), np.load(d / "items.npy"), opt("features"), opt("spatial"), images,
                        json.loads((d / "summary.json").read_text()))
