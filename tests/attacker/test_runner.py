"""attack_items / load_attack: stored artifacts, reuse, and nothing written on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from advrec_common.errors import InvalidInput, NotFound
from services.attacker.artifacts import png_name
from services.attacker.runner import attack_items, load_attack
from services.attacker.spec import AttackSpec

MODEL_KEY = "0" * 64


@pytest.fixture
def catalog():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), [f"item-{i}" for i in range(4)] + ["odd/id"]


def test_attack_is_stored_and_reused(store, random_model, catalog):
    images, ids = catalog
    spec = AttackSpec(method="pgd", eps=4, steps=2)
    key = attack_items(store, random_model, MODEL_KEY, images, ids, spec, target=2)
    art = load_attack(store, key)
    assert art.images.shape == images.shape and art.images.dtype == np.uint8
    assert art.item_ids == ids and len(art.table) == 5 and art.adv_features.shape == (5, random_model.feature_dim)
    assert np.abs(art.images.astype(int) - images.astype(int)).max() <= 4
    png = np.asarray(Image.open(art.path / "images" / png_name("odd/id")))
    assert np.array_equal(png, art.images[4]) and png_name("odd/id").startswith("id-")
    assert art.summary["target"] == 2 and art.summary["method"] == "pgd" and art.summary["images_per_s"] > 0
    assert isinstance(art.table[0]["success"], bool) and isinstance(art.table[0]["linf"], float)
    stamp = (art.path / "summary.json").stat().st_mtime_ns
    assert attack_items(store, random_model, MODEL_KEY, images, ids, spec, target=2) == key  # reused
    assert (art.path / "summary.json").stat().st_mtime_ns == stamp and store.keys() == [key]
    # any change in what was attacked is a new artifact
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    assert attack_items(store, random_model, MODEL_KEY, other, ids, spec, target=2) != key
    assert attack_items(store, random_model, "1" * 64, images, ids, spec, target=2) != key


def test_float_delivery_and_feature_match(store, random_model, catalog):
    images, ids = catalog
    key = attack_items(store, random_model, MODEL_KEY, images, ids, AttackSpec(method="fgsm", eps=2), 1, delivery="float")
    art = load_attack(store, key)
    assert art.images.dtype == np.float32 and not (art.path / "images").exists()
    tf = np.zeros((3, random_model.feature_dim), np.float32)
    k2 = attack_items(store, random_model, MODEL_KEY, images, ids, AttackSpec(method="feature_match", eps=2, steps=2), 1,
                      target_features=tf)
    assert json.loads((store.open(k2) / "summary.json").read_text())["method"] == "feature_match"
    with pytest.raises(InvalidInput, match="target_features"):
        attack_items(store, random_model, MODEL_KEY, images, ids, AttackSpec(method="feature_match", eps=2), 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": np.zeros((0, 32, 32, 3), np.uint8), "ids": []}, "empty batch"),
        ({"images": np.zeros((2, 32, 32, 3), np.float32), "ids": ["a", "b"]}, "uint8"),
        ({"ids": ["a", "b"]}, "2 item ids for 5 images"),
        ({"ids": ["a"] * 5}, "not unique"),
        ({"target": 9}, "target must be a class index"),
        ({"delivery": "bmp"}, "unknown delivery"),
    ],
)
def test_bad_input_writes_nothing(store, random_model, catalog, change, message):
    images, ids = catalog
    kw = {"images": images, "ids": ids, "target": 1, "delivery": "png8", **change}
    with pytest.raises(InvalidInput, match=message):
        attack_items(store, random_model, MODEL_KEY, kw["images"], kw["ids"], AttackSpec(method="fgsm", eps=2),
                     kw["target"], delivery=kw["delivery"])
    assert store.keys() == [] and not any((store.root / "tmp").iterdir())


def test_load_unknown_attack(store):
    with pytest.raises(NotFound):
        load_attack(store, "a" * 64)
