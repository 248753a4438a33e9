"""The recommender domain's artifact formats: trained models, the scenario, evaluations.

* ``train``: ``model.pt/`` (a saved :class:`Recommender`: ``state.pt`` + ``config.json``),
  ``topk.npy`` (U,K) int64 clean top-K lists (training items excluded), ``train.json`` (fit seconds,
  fit report, accuracy means) and ``lineage.json`` (the dataset / features / extractor keys and the
  image size the model's item side came from; absent in artifacts written before it existed).
* ``scenario``: ``scenario.json`` (origin and target categories, how they were chosen, the ranking).
* ``evaluate``: ``topk.npy`` (the lists after the attack) and ``metrics.json`` (per-K category
  metrics with their tests, accuracy after, rank shift).
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
def write_train_artifact(out: Path, model: Recommender, top: np.ndarray, info: dict[str, Any],
                         lineage: dict[str, Any]) -> None:
    """Fill a ``train`` artifact directory."""
    model.save(out / MODEL_DIR)
    np.save(out / TOPK_FILE, np.asarray(top, dtype=np.int64))
    _dump(out / TRAIN_FILE, info)
    _dump(out / LINEAGE_FILE, lineage)


@lru_cache(maxsize=8)
def _model_cached(root: str, key: str) -> Recommender:
    return Recommender.load(ArtifactStore(root).open(key) / MODEL_DIR, device="cpu")


def load_model(store: ArtifactStore, key: str) -> Recommender:
    """The fitted recommender of a ``train`` artifact (CPU, eval mode; cached per store and key)."""
    return _model_cached(str(store.root), key)


def load_topk(store: ArtifactStore, key: str) -> np.ndarray:
    """(U,K) int64 top-K lists of a ``train`` or ``evaluate`` artifact."""
    return np.load(store.open(key) / TOPK_FILE, allow_pickle=False)


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
def write_evaluation(out: Path, top_after: np.ndarray, metrics: dict[str, Any]) -> None:
    np.save(out / TOPK_FILE, np.asarray(top_after, dtype=np.int64))
    _dump(out / METRICS_FILE, metrics)


def load_metrics(store: ArtifactStore, key: str) -> dict[str, Any]:
    return json.loads((store.open(key) / METRICS_FILE).read_text())
