"""The ``dataset`` artifact: a loaded catalog + its leave-one-out split, shared by every service.

Files: ``items.json`` (name, item ids, user ids, n_users, image paths or None, categories and
category names), ``train_user.npy`` / ``train_item.npy`` / ``test_user.npy`` / ``test_item.npy``
(int64 indices) and, for catalogs generated in memory, ``images.npy`` (I,H,W,3) uint8 (read
memory-mapped). Readers are cached by key (artifacts are immutable).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from advrec_common.datasets.types import Catalog, Interactions, RecDataset
from advrec_common.store import ArtifactStore

ITEMS_FILE = "items.json"
_SPLITS = ("train_user", "train_item", "test_user", "test_item")


def write_dataset_artifact(out: Path, ds: RecDataset) -> dict[str, Any]:
    """Fill a ``dataset`` artifact directory; returns its summary (n_items, n_users, n_train, n_test, and
    ``notes`` when the dataset has some)."""
    cat = ds.catalog
    if cat.images is not None:
        np.save(out / "images.npy", np.ascontiguousarray(cat.images))
    for name, arr in zip(_SPLITS, (ds.train.user, ds.train.item, ds.test.user, ds.test.item), strict=True):
        np.save(out / f"{name}.npy", arr)
    doc = {
        "name": ds.name, "item_ids": cat.item_ids, "user_ids": ds.user_ids, "n_users": ds.n_users,
        "image_paths": [str(x) for x in cat.image_paths] if cat.image_paths is not None else None,
        "categories": cat.categories, "category_names": cat.category_names,
    }
    (out / ITEMS_FILE).write_text(json.dumps(doc, indent=1))
    summary: dict[str, Any] = {"n_items": len(cat), "n_users": ds.n_users, "n_train": len(ds.train),
                               "n_test": len(ds.test)}
    if ds.notes:  # e.g. a split in file order: the report's dataset line prints them
        summary["notes"] = list(ds.notes)
    return summary


@lru_cache(maxsize=8)
def _cached(root: str, key: str) -> RecDataset:
    d = ArtifactStore(root).open(key)
    items = json.loads((d / ITEMS_FILE).read_text())
    n_users, n_items = items["n_users"], len(items["item_ids"])
    images = np.load(d / "images.npy", mmap_mode="r") if (d / "images.npy").is_file() else None
    paths = [Path(p) for p in items["image_paths"]] if items.get("image_paths") else None
    catalog = Catalog(item_ids=items["item_ids"], image_paths=paths, images=images,
                      categories=items.get("categories"), category_names=items.get("category_names", []))
    arr = {n: np.load(d / f"{n}.npy") for n in _SPLITS}
    return RecDataset(
        name=items["name"], catalog=catalog, user_ids=items["user_ids"],
        train=Interactions(arr["train_user"], arr["train_item"], n_users, n_items),
        test=Interactions(arr["test_user"], arr["test_item"], n_users, n_items),
    )


def load_dataset_artifact(store: ArtifactStore, key: str) -> RecDataset:
    """The :class:`RecDataset` of a ``dataset`` artifact (cached per store and key)."""
    return _cached(str(store.root), key)


def dataset_name(store: ArtifactStore, key: str) -> str | None:
    """The dataset's name without loading its arrays."""
    return json.loads((store.open(key) / ITEMS_FILE).read_text()).get("name")
