"""Batch extraction: equals a direct forward, streaming equals in-memory, study files, typed errors."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from advrec_common.datasets.images import load_catalog_images
from advrec_common.datasets.types import Catalog
from advrec_common.errors import BadImage, InvalidInput, NotFound
from advrec_common.vision.backbones import build_model
from services.extractor.extraction import (
    extract_features,
    read_study_outputs,
    write_study_outputs,
)

NAMES = ["shirt", "bag", "hat, cap"]  # a comma in a class name must survive the CSV


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small_cnn", NAMES).eval()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)


def _png_catalog(tmp_path, images, ids=None) -> Catalog:
    ids = ids or [f"item{i}" for i in range(len(images))]
    paths = []
    for iid, img in zip(ids, images, strict=True):
        paths.append(tmp_path / f"{iid}.png")
        Image.fromarray(img).save(paths[-1])
    return Catalog(item_ids=list(ids), image_paths=paths)


def test_cpu_extraction_equals_a_direct_forward(model, images):
    res = extract_features(model, images, batch_size=4, device="cpu", spatial=True)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        out = model.forward_all(x, spatial=True)
    np.testing.assert_allclose(res.features, out.features.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.spatial, out.spatial.numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(res.classes, out.logits.argmax(1).numpy())
    np.testing.assert_allclose(res.probs, out.logits.softmax(1).max(1).values.numpy(), rtol=1e-6)
    assert res.features.dtype == np.float32 and res.classes.dtype == np.int64 and res.probs.dtype == np.float32
    assert res.spatial.shape == (10, 128, 2, 2)
    # a float tensor in [0,1] gives the same, and batch size does not matter
    again = extract_features(model, x, batch_size=10, device="cpu")
    np.testing.assert_allclose(again.features, res.features, rtol=1e-5, atol=1e-6)
    assert again.spatial is None


def test_catalog_streaming_equals_in_memory(tmp_path, model, images):
    in_memory = extract_features(model, images, batch_size=3, device="cpu")
    streamed = extract_features(model, _png_catalog(tmp_path, images), batch_size=3, device="cpu")
    assert np.array_equal(streamed.features, in_memory.features)
    assert np.array_equal(streamed.classes, in_memory.classes)
    array_catalog = Catalog(item_ids=[str(i) for i in range(10)], images=images)
    assert np.array_equal(extract_features(model, array_catalog, batch_size=3, device="cpu").features,
                          in_memory.features)


def test_resize_option(tmp_path, model, images):
    res = extract_features(model, images[:2], image_size=64, spatial=True, device="cpu")
    assert res.spatial.shape == (2, 128, 4, 4)
    cat = extract_features(model, _png_catalog(tmp_path, images[:2]), image_size=64, spatial=True, device="cpu")
    assert cat.spatial.shape == (2, 128, 4, 4)
    # PIL bicubic (catalog) and torch bicubic (arrays) differ slightly, not grossly
    np.testing.assert_allclose(cat.features, res.features, atol=0.1)


def test_streamed_catalog_equals_one_whole_batch(tmp_path, model):
    rng = np.random.default_rng(4)
    shapes = [(40, 20), (20, 40), (32, 32), (17, 50), (64, 48), (30, 30), (25, 25)]
    cat = _png_catalog(tmp_path, [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in shapes])
    for fit in ("crop", "pad"):
        whole = load_catalog_images(cat, size=24, fit=fit)
        one_batch = extract_features(model, whole, batch_size=len(whole), device="cpu", spatial=True)
        streamed = extract_features(model, cat, batch_size=3, image_size=24, fit=fit, device="cpu", spatial=True,
                                    num_workers=2)
        np.testing.assert_allclose(streamed.features, one_batch.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(streamed.spatial, one_batch.spatial, rtol=1e-5, atol=1e-6)
        assert np.array_equal(streamed.classes, one_batch.classes)
    with pytest.raises(InvalidInput, match=r"extractors\[\]\.image_size"):
        extract_features(model, cat, device="cpu")  # mixed sizes at native size


def test_arrays_and_catalog_share_the_fit_geometry(tmp_path, model):
    wide = np.zeros((2, 20, 40, 3), np.uint8)
    wide[:, :, :10], wide[:, :, 10:] = (250, 30, 30), (30, 30, 250)  # a red stripe that crop cuts off
    cat = _png_catalog(tmp_path, wide, ids=["a", "b"])
    feats = {}
    for fit in ("crop", "pad", "stretch"):
        feats[fit] = extract_features(model, wide, image_size=16, fit=fit, device="cpu").features
        from_files = extract_features(model, cat, image_size=16, fit=fit, device="cpu").features
        np.testing.assert_allclose(from_files, feats[fit], atol=0.01)  # PIL and torch bicubic differ slightly
    for a, b in (("crop", "pad"), ("crop", "stretch"), ("pad", "stretch")):
        assert np.abs(feats[a] - feats[b]).max() > 0.05, (a, b)  # ... while the geometries differ clearly
    with pytest.raises(InvalidInput, match="fit must be one of"):
        extract_features(model, wide, image_size=16, fit="squash", device="cpu")


def test_resnet50_spatial_map_at_224():
    torch.manual_seed(0)
    net = build_model("resnet50", [f"c{i}" for i in range(5)])
    img = np.random.default_rng(1).integers(0, 256, size=(1, 224, 224, 3), dtype=np.uint8)
    res = extract_features(net, img, spatial=True, device="cpu")
    assert res.features.shape == (1, 2048) and res.spatial.shape == (1, 2048, 7, 7)
    np.testing.assert_allclose(res.spatial.mean(axis=(2, 3)), res.features, rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_invalid_input(model, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x[3, 0, 5, 5] = float("nan")
    with pytest.raises(InvalidInput, match="NaN"):
        extract_features(model, x, device="cpu")
    with pytest.raises(InvalidInput, match=r"\[0,1\]"):
        extract_features(model, np.full((1, 3, 8, 8), 2.0, dtype=np.float32), device="cpu")
    with pytest.raises(InvalidInput, match=r"\(N,H,W,3\)"):
        extract_features(model, images[..., :2].copy(), device="cpu")
    with pytest.raises(InvalidInput, match="no images"):
        extract_features(model, images[:0], device="cpu")
    with pytest.raises(InvalidInput, match="batch_size"):
        extract_features(model, images, batch_size=0, device="cpu")


def test_corrupt_or_missing_catalog_image_fails_and_writes_nothing(tmp_path, model, images):
    cat = _png_catalog(tmp_path, images[:4])
    cat.image_paths[2].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    with pytest.raises(BadImage, match="item2"):
        write_study_outputs(extract_features(model, cat, device="cpu"), NAMES, cat.item_ids, out)
    assert not out.exists()
    os.unlink(cat.image_paths[2])
    with pytest.raises((BadImage, NotFound), match="does not exist"):
        extract_features(model, cat, device="cpu")


def test_study_outputs_round_trip(tmp_path, model, images):
    res = extract_features(model, images, device="cpu")
    ids = [f"{i}" for i in range(10)]
    out = write_study_outputs(res, NAMES, ids, tmp_path / "exp")
    assert sorted(os.listdir(out)) == ["classes.csv", "features.npy"]  # no temporary files left
    feats = np.load(out / "features.npy")
    assert feats.dtype == np.float32 and feats.shape == (10, 128)
    with open(out / "classes.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["ImageID", "ClassNum", "ClassStr", "Prob"] and len(rows) == 11
    assert rows[1][2] == NAMES[int(rows[1][1])]
    back = read_study_outputs(out)
    assert back.item_ids == ids and back.class_str == [NAMES[c] for c in res.classes]
    assert np.array_equal(back.result.features, res.features) and np.array_equal(back.result.classes, res.classes)
    np.testing.assert_allclose(back.result.probs, res.probs, rtol=1e-6)


def test_study_outputs_are_validated_before_writing(tmp_path, model, images):
    res = extract_features(model, images, device="cpu")
    with pytest.raises(InvalidInput, match="item ids"):
        write_study_outputs(res, NAMES, ["a"] * 9, tmp_path / "x")
    with pytest.raises(InvalidInput, match="unique"):
        write_study_outputs(res, NAMES, ["a"] * 10, tmp_path / "x")
    with pytest.raises(InvalidInput, match="class"):
        write_study_outputs(res, NAMES[:1], [str(i) for i in range(10)], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(NotFound):
        read_study_outputs(tmp_path / "x")
