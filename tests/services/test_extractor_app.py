"""Extractor service: listings, extraction equal to extract_features, micro-batching, catalog features, errors."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest

from tests.services.conftest import INTERNAL_TOKEN, png_bytes, store_snapshot


def _catalog_images(tiny, n):
    from advrec_common.datasets.artifact import load_dataset_artifact
    from advrec_common.datasets.images import load_catalog_images

    ds = load_dataset_artifact(tiny.store, tiny.keys["dataset"])
    return load_catalog_images(ds.catalog, list(range(n)))


def _files(images):
    return [("images", (f"img{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(images)]


def test_listings(extractor_client, tiny):
    names = {b["name"] for b in extractor_client.get("/v1/backbones").json()}
    assert {"small_cnn", "resnet50"} <= names
    weights = {w["name"]: w for w in extractor_client.get("/v1/weights").json()}
    madry = weights["resnet50:madry_linf_4"]
    assert madry["present"] is False and madry["path"].startswith(str(tiny.settings.resolved_weights_dir))
    ext = extractor_client.get("/v1/extractors").json()
    assert [e["key"] for e in ext] == [tiny.keys["extractor"]]
    assert ext[0]["backbone"] == "small_cnn" and ext[0]["n_classes"] == 5 and ext[0]["feature_dim"] == 128
    assert extractor_client.get("/healthz").status_code == 200 and extractor_client.get("/readyz").status_code == 200


def test_extract_matches_extract_features(extractor_client, tiny):
    from advrec_common.vision.artifact import load_extractor_artifact
    from services.extractor.extraction import extract_features

    images = _catalog_images(tiny, 3)
    r = extractor_client.post("/v1/extract", data={"extractor": tiny.keys["extractor"]}, files=_files(images))
    assert r.status_code == 200, r.text
    body = r.json()
    ref = extract_features(load_extractor_artifact(tiny.store, tiny.keys["extractor"]), images, batch_size=8,
                           device="cpu", spatial=False, image_size=None)
    got = np.asarray([it["features"] for it in body["items"]], dtype=np.float32)
    np.testing.assert_allclose(got, np.asarray(ref.features), rtol=1e-4, atol=1e-5)
    assert [it["class_index"] for it in body["items"]] == np.asarray(ref.classes).tolist()
    assert [it["filename"] for it in body["items"]] == ["img0.png", "img1.png", "img2.png"]
    # base64 encoding carries the same float32 vector
    r64 = extractor_client.post("/v1/extract", data={"extractor": tiny.keys["extractor"], "encoding": "base64"},
                                files=_files(images[:1]))
    vec = np.frombuffer(base64.b64decode(r64.json()["items"][0]["features_b64"]), dtype="<f4")
    np.testing.assert_allclose(vec, got[0], rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_micro_batched(tiny):
    """8 concurrent one-image requests -> fewer forwards than requests (counted on the model itself)."""
    from advrec_common.settings import get_settings
    from advrec_common.vision.artifact import load_extractor_artifact
    from services.extractor import app as module

    app = module.create_app()
    app.dependency_overrides[get_settings] = lambda: tiny.settings
    model = load_extractor_artifact(tiny.store, tiny.keys["extractor"])
    forwards = []
    hook = model.body.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    images = _catalog_images(tiny, 8)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc",
                                     headers={"X-Internal-Token": INTERNAL_TOKEN}) as client:
            return await asyncio.gather(*(
                client.post("/v1/extract", data={"extractor": tiny.keys["extractor"]}, files=_files([im]))
                for im in images))

    try:
        responses = asyncio.run(main())
    finally:
        hook.remove()
    assert all(r.status_code == 200 for r in responses)
    assert sum(forwards) == 8 and len(forwards) < 8 and max(forwards) > 1
    assert app.state.batcher.stats.items == 8 and app.state.batcher.stats.batches == len(forwards)


def test_catalog_features_reuse_pipeline_artifact(extractor_client, tiny):
    body = {"dataset": tiny.keys["dataset"], "extractor": tiny.keys["extractor"]}
    r = extractor_client.post("/v1/extract/catalog", json=body)
    assert r.status_code == 200, r.text
    # same key the pipeline's features step produced, so nothing was recomputed
    assert r.json() == {"features": tiny.keys["features"], "computed": False, "n_items": 30, "dim": 128}


@pytest.mark.parametrize(
    ("case", "status"),
    [("corrupt", 422), ("huge_pixels", 422), ("huge_bytes", 413), ("unknown_key", 404), ("bad_key", 422),
     ("wrong_kind", 422), ("no_images", 422)],
)
def test_extract_errors_change_nothing(extractor_client, tiny, case, status):
    images = _catalog_images(tiny, 1)
    key = tiny.keys["extractor"]
    files = _files(images)
    if case == "corrupt":
        files = [("images", ("x.png", png_bytes(images[0])[:60], "image/png"))]
    elif case == "huge_pixels":
        tiny_limit = tiny.settings.model_copy(update={"max_image_pixels": 16 * 16})
        extractor_client.app.dependency_overrides[__import__("advrec_common.settings").settings.get_settings] = (
            lambda: tiny_limit)
    elif case == "huge_bytes":
        files = [("images", ("big.png", b"\x89PNG" + bytes(tiny.settings.max_upload_bytes), "image/png"))]
    elif case == "unknown_key":
        key = "0" * 64
    elif case == "bad_key":
        key = "../../etc/passwd"
    elif case == "wrong_kind":
        key = tiny.keys["dataset"]
    elif case == "no_images":
        files = []
    before = store_snapshot(tiny.home)
    r = extractor_client.post("/v1/extract", data={"extractor": key}, files=files or None)
    assert r.status_code == status, r.text
    assert "detail" in r.json()
    assert store_snapshot(tiny.home) == before


def test_catalog_errors(extractor_client, tiny):
    r = extractor_client.post("/v1/extract/catalog", json={"dataset": "f" * 64, "extractor": tiny.keys["extractor"]})
    assert r.status_code == 404
    r = extractor_client.post("/v1/extract/catalog", json={"dataset": "../x", "extractor": tiny.keys["extractor"]})
    assert r.status_code == 422


def test_catalog_work_above_the_sync_limit_is_413_before_any_forward(extractor_client, tiny):
    """Computing a catalog's features costs items x pixels / 224^2 forwards; above
    max_sync_extract_images it is refused before anything runs (pointing at jobs); stored features
    cost nothing and are still served."""
    from advrec_common.settings import get_settings

    limit = 30 * 32 * 32 // (224 * 224) + 1  # above what 30 items cost at 32x32, far below 448x448
    low = tiny.settings.model_copy(update={"max_sync_extract_images": limit})
    extractor_client.app.dependency_overrides[get_settings] = lambda: low
    body = {"dataset": tiny.keys["dataset"], "extractor": tiny.keys["extractor"]}
    assert extractor_client.post("/v1/extract/catalog", json=body).json()["computed"] is False  # stored: served
    before = store_snapshot(tiny.home)
    r = extractor_client.post("/v1/extract/catalog", json={**body, "image_size": 448})
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "30 catalog images at 448x448" in detail and "ADVREC_MAX_SYNC_EXTRACT_IMAGES" in detail
    assert "POST /v1/jobs" in detail
    assert store_snapshot(tiny.home) == before
    r = extractor_client.post("/v1/extract/catalog", json={**body, "image_size": 32})  # 30 x 32^2 px: within
    assert r.status_code == 200 and r.json()["computed"] is True
