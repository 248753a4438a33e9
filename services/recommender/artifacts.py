"""The recommender domain's artifact formats: trained models, the scenario, evaluations.

* ``train``: R replicates (seeds seed..seed+R-1) of one model: ``model.pt/`` (replicate 0, the
  one the recommender service serves: ``state.pt`` + ``config.json``), ``model.r<r>/`` for the
  others, ``topk.npy`` (R,U,K) int64 clean top-K lists (training items excluded), ``train.json``
  (fit seconds, fit reports, accuracy means per replicate and over them) and ``lineage.json`` (the
  dataset / features / extractor keys and the image size the item side came from).
* ``scenario``: ``scenario.json`` (origin and target categories, how they were chosen, the ranking).
* ``evaluate``: ``topk.npy`` (R,U,K) lists after the perturbation, per replicate, and
  ``metrics.json`` (per-K category metrics per replicate with their effects and tests, accuracy
  after, rank shift).
* ``promo_items``: ``items.npy`` (N,) the catalog rows a seller promotes and ``promoted.json`` (their ids,
  how they were chosen, their clean slot counts).
* ``promo_evaluate``: ``metrics.json``: per replicate, per promoted item, its standing before and after
  (:func:`services.recommender.promotion.promotion_metrics`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from advrec_common.store import ArtifactStore
from services.recommender.models.base import Recommender

MODEL_DIR, TOPK_FILE, TRAIN_FILE, LINEAGE_FILE = "model.pt", "topk.npy", "train.json", "lineage.json"
SCENARIO_FILE, METRICS_FILE = "scenario.json", "metrics.json"
PROMOTED_ITEMS, PROMOTED_FILE = "items.npy", "promoted.json"


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "tolist"):  # torch tensors
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- train -----------------------------------------------------------------------------------------
def _model_dir(replicate: int) -> str:
    return MODEL_DIR if replicate == 0 else f"model.r{replicate}"


def write_train_artifact(out: Path, models: list[Recommender], tops: np.ndarray, info: dict[str, Any],
                         lineage: dict[str, Any]) -> None:
    """Fill a ``train`` artifact directory: one model per replicate, their (R,U,K) lists."""
    tops = np.asarray(tops, dtype=np.int64)
    if tops.ndim != 3 or tops.shape[0] != len(models):
        raise ValueError(f"expected (R,U,K) lists for {len(models)} replicates, got {tops.shape}")
    for r, model in enumerate(models):
        model.save(out / _model_dir(r))
    np.save(out / TOPK_FILE, tops)
    _dump(out / TRAIN_FILE, info)
    _dump(out / LINEAGE_FILE, lineage)


@lru_cache(maxsize=16)
def _model_cached(root: str, key: str, replicate: int) -> Recommender:
    return Recommender.load(ArtifactStore(root).open(key) / _model_dir(replicate), device="cpu")


def load_model(store: ArtifactStore, key: str, replicate: int = 0) -> Recommender:
    """Replicate ``replicate`` of a ``train`` artifact (CPU, eval mode; cached per store, key, replicate)."""
    return _model_cached(str(store.root), key, int(replicate))


def n_replicates(store: ArtifactStore, key: str) -> int:
    """How many replicates a ``train`` artifact holds."""
    return int(load_topk(store, key).shape[0])


def load_topk(store: ArtifactStore, key: str) -> np.ndarray:
    """(R,U,K) int64 top-K lists of a ``train`` or ``evaluate`` artifact (one per replicate)."""
    top = np.load(store.open(key) / TOPK_FILE, allow_pickle=False)
    return top[None] if top.ndim == 2 else top


def train_info(store: ArtifactStore, key: str) -> dict[str, Any]:
    """``train.json`` of a ``train`` artifact."""
    return json.loads((store.open(key) / TRAIN_FILE).read_text())


def train_lineage(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    """``lineage.json`` of a ``train`` artifact, or None for artifacts written before it existed."""
    path = store.open(key) / LINEAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


# -- scenario --------------------------------------------------------------------------------------
def write_scenario(out: Path, scenario: dict[str, Any]) -> None:
    _dump(out / SCENARIO_FILE, scenario)


def load_scenario(store: ArtifactStore, key: str) -> dict[str, Any]:
    return json.loads((store.open(key) / SCENARIO_FILE).read_text())


# -- evaluate --------------------------------------------------------------------------------------
def write_evaluation(out: Path, tops_after: np.ndarray, metrics: dict[str, Any]) -> None:
    """Fill an ``evaluate`` directory: (R,U,K) lists after the perturbation and the metrics."""
    np.save(out / TOPK_FILE, np.asarray(tops_after, dtype=np.int64))
    _dump(out / METRICS_FILE, metrics)


def load_metrics(store: ArtifactStore, key: str) -> dict[str, Any]:
    return json.loads((store.open(key) / METRICS_FILE).read_text())


# -- item promotion --------------------------------------------------------------------------------
def write_promoted_items(out: Path, rows: np.ndarray, info: dict[str, Any]) -> None:
    """Fill a ``promo_items`` directory: the promoted catalog rows (N,) and how they were chosen."""
    np.save(out / PROMOTED_ITEMS, np.asarray(rows, dtype=np.int64))
    _dump(out / PROMOTED_FILE, info)


def load_promoted_items(store: ArtifactStore, key: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(rows (N,), info) of a ``promo_items`` artifact."""
    d = store.open(key)
    return np.load(d / PROMOTED_ITEMS, allow_pickle=False), json.loads((d / PROMOTED_FILE).read_text())


def write_promotion_evaluation(out: Path, metrics: dict[str, Any]) -> None:
    """Fill a ``promo_evaluate`` directory (``metrics.json``, read back by :func:`load_metrics`)."""
    _dump(out / METRICS_FILE, metrics)
