"""Which categories the study's metrics use: catalog labels or the extractor's classes."""

from __future__ import annotations

import numpy as np
import pytest

from advrec_common.datasets.types import Catalog, Interactions, RecDataset
from advrec_common.errors import InvalidInput
from services.extractor.artifacts import item_categories


def _ds(labels):
    cat = Catalog(item_ids=["a", "b", "c"], images=np.zeros((3, 4, 4, 3), np.uint8), categories=labels,
                  category_names=["shoe", "bag"] if labels and None not in labels else [])
    empty = Interactions(np.zeros(0), np.zeros(0), 1, 3)
    return RecDataset("t", cat, empty, empty, ["u"])


CLASSES = np.array([1, 1, 0])
NAMES = ["shoe", "bag", "hat"]


def test_catalog_labels_when_they_name_extractor_classes():
    ids, names, src = item_categories(_ds(["shoe", "bag", "bag"]), CLASSES, NAMES, "auto")
    assert src == "catalog" and names == ["shoe", "bag"] and ids.tolist() == [0, 1, 1]


def test_extractor_classes_when_labels_are_missing_or_foreign():
    ids, names, src = item_categories(_ds(None), CLASSES, NAMES, "auto")
    assert src == "extractor" and names == NAMES and ids.tolist() == [1, 1, 0]
    foreign = _ds(["shoe", "bag", "bag"])
    ids, _, src = item_categories(foreign, CLASSES, ["x", "y"], "auto")
    assert src == "extractor" and ids.tolist() == [1, 1, 0]
    ids, _, src = item_categories(foreign, CLASSES, NAMES, "extractor")
    assert src == "extractor" and ids.tolist() == [1, 1, 0]


def test_catalog_source_needs_every_label():
    with pytest.raises(InvalidInput, match="category label"):
        item_categories(_ds(["shoe", None, "bag"]), CLASSES, NAMES, "catalog")
