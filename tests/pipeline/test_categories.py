"""Which categories the study's metrics use (catalog labels or the extractor's classes, and why),
and the category head that lets attacks aim at labels that are not classes of the extractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advrec_common.datasets.types import Catalog, Interactions, RecDataset
from advrec_common.errors import InvalidInput
from advrec_common.vision.backbones import build_model
from services.extractor.artifacts import FeatureSet, category_choice, category_model, item_categories
from services.extractor.category_head import fit_category_head


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


def test_auto_keeps_labels_that_are_not_extractor_classes():
    """A shop's labels are never ImageNet names: auto still uses them (a head is fitted), and says why."""
    foreign = _ds(["shoe", "bag", "bag"])
    ids, names, src = item_categories(foreign, CLASSES, ["x", "y"], "auto")
    assert src == "catalog" and names == ["shoe", "bag"] and ids.tolist() == [0, 1, 1]
    assert category_choice(foreign, "auto") == ("catalog", "every item has a category label in the catalog")


def test_extractor_classes_when_labels_are_missing_or_asked_for():
    ids, names, src = item_categories(_ds(None), CLASSES, NAMES, "auto")
    assert src == "extractor" and names == NAMES and ids.tolist() == [1, 1, 0]
    assert "no category labels" in category_choice(_ds(None), "auto")[1]
    used, why = category_choice(_ds(["shoe", None, "bag"]), "auto")
    assert used == "extractor" and "1 of 3 items have no category label" in why
    ids, _, src = item_categories(_ds(["shoe", "bag", "bag"]), CLASSES, NAMES, "extractor")
    assert src == "extractor" and ids.tolist() == [1, 1, 0]


def test_catalog_source_needs_every_label():
    with pytest.raises(InvalidInput, match="1 of 3 items have none"):
        item_categories(_ds(["shoe", None, "bag"]), CLASSES, NAMES, "catalog")


def _blobs(n_per=30, dim=16, seed=0):
    """Three separable Gaussian blobs in feature space (features on very different scales)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (3, dim))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, dim)) for c in centers]).astype(np.float32)
    x *= np.geomspace(0.01, 100, dim, dtype=np.float32)  # standardisation must cope with the scales
    return x, np.repeat(np.arange(3), n_per)


def test_category_head_is_deterministic_accurate_and_one_linear_layer():
    x, y = _blobs()
    a = fit_category_head(x, y, ["monitor", "document", "folder"])
    b = fit_category_head(x, y, ["monitor", "document", "folder"])
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)  # same bits twice
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's thread count does not enter (fitted on one thread)
    try:
        c = fit_category_head(x, y, ["monitor", "document", "folder"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(a.weight, c.weight) and np.array_equal(a.bias, c.bias)
    assert a.report["held_out_accuracy"] >= 0.9 and a.report["train_accuracy"] == 1.0
    assert a.report["n_held_out"] == 18  # 20 % of each class
    with torch.no_grad():  # the folded standardisation: the module computes the same logits
        out = a.module()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, a.logits(x), rtol=1e-4, atol=1e-3)


def test_category_head_without_a_held_out_split_says_so():
    head = fit_category_head(np.eye(2, dtype=np.float32), np.array([0, 1]), ["a", "b"])
    assert head.report["held_out_accuracy"] is None and "no held-out estimate" in head.report["note"]
    with pytest.raises(InvalidInput, match="two categories"):
        fit_category_head(np.eye(2, dtype=np.float32), np.array([0, 0]), ["a"])


def test_category_model_attacks_through_the_head_on_the_same_features():
    torch.manual_seed(0)
    base = build_model("tiny_cnn", ["shirt", "sock"], input_size=32).eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        feats = base.features(x).numpy()
    head = fit_category_head(feats, np.array([0, 1, 2, 0, 1, 2]), ["monitor", "document", "folder"])
    fs = FeatureSet(feats, np.zeros(6, np.int64), np.zeros(6, np.float32), None, base.class_names,
                    np.array([0, 1, 2, 0, 1, 2]), ["monitor", "document", "folder"], head=(head.weight, head.bias))
    model = category_model(base, fs)
    assert model.class_names == ["monitor", "document", "folder"] and base.class_names == ["shirt", "sock"]
    assert model.body is base.body and model.input_size == 32
    with torch.no_grad():
        out = model.forward_all(x)
    assert torch.equal(out.features, base.features(x))
    np.testing.assert_allclose(out.logits.numpy(), head.logits(feats), rtol=1e-4, atol=1e-4)
    # categories that are classes of the extractor: the extractor's own classifier
    own = FeatureSet(feats, np.zeros(6, np.int64), np.zeros(6, np.float32), None, base.class_names,
                     np.zeros(6, np.int64), ["sock"])
    assert category_model(base, own) is base
    with pytest.raises(InvalidInput, match="no category head"):
        category_model(base, FeatureSet(feats, np.zeros(6, np.int64), np.zeros(6, np.float32), None,
                                        base.class_names, np.zeros(6, np.int64), ["monitor"]))
