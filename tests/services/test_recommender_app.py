"""Recommender service: model listing, top-K vs scoring.topk, what-if scores, image refresh, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.services.conftest import png_bytes, store_snapshot


def _loaded(tiny):
    from advrec_common.datasets.artifact import load_dataset_artifact as load_dataset
    from services.extractor.artifacts import load_features
    from services.recommender.models.base import Recommender

    model = Recommender.load(tiny.store.open(tiny.keys["train"]) / "model.pt")
    return model, load_dataset(tiny.store, tiny.keys["dataset"]), load_features(tiny.store, tiny.keys["features"])


def _clear_overlay(tiny):
    import shutil

    shutil.rmtree(tiny.home / "overlays", ignore_errors=True)


def test_models_lists_lineage(recommender_client, tiny):
    rows = recommender_client.get("/v1/models").json()
    assert len(rows) == 1
    row = rows[0]
    assert row["key"] == tiny.keys["train"] and row["recommender"] == "vbpr"
    assert (row["dataset"], row["features"], row["extractor"]) == (
        tiny.keys["dataset"], tiny.keys["features"], tiny.keys["extractor"])


def test_top_excludes_training_items_and_matches_topk(recommender_client, tiny):
    from services.recommender.scoring import topk

    _clear_overlay(tiny)
    model, ds, _ = _loaded(tiny)
    user = 3
    r = recommender_client.get(f"/v1/models/{tiny.keys['train']}/users/{ds.user_ids[user]}/top", params={"k": 5})
    assert r.status_code == 200, r.text
    got = [it["item_index"] for it in r.json()["items"]]
    _, ref = topk(model, torch.tensor([user]), 5, exclude=ds.train)
    assert got == ref[0].tolist()
    trained = set(ds.train.item[ds.train.user == user].tolist())
    assert trained and not trained & set(got)
    assert [it["rank"] for it in r.json()["items"]] == [1, 2, 3, 4, 5]


def test_score_with_replaced_features_equals_model_score(recommender_client, tiny):
    from services.recommender.items import ItemSide

    _clear_overlay(tiny)
    model, ds, feats = _loaded(tiny)
    rng = np.random.default_rng(0)
    new = rng.normal(size=(2, 128)).astype(np.float32) * 3
    items, users = [4, 9], [0, 1, 2]
    body = {"users": [ds.user_ids[u] for u in users],
            "items": [{"item_id": ds.catalog.item_ids[i], "features": new[j].tolist()} for j, i in enumerate(items)]}
    r = recommender_client.post(f"/v1/models/{tiny.keys['train']}/score", json=body)
    assert r.status_code == 200, r.text
    F = np.array(feats.features)
    F[items] = new
    ref = model.score(torch.tensor(users), ItemSide(features=torch.as_tensor(F)))
    base = model.score(torch.tensor(users))
    changes = r.json()["changes"]
    assert len(changes) == 6
    for c in changes:
        u, i = ds.user_ids.index(c["user_id"]), ds.catalog.item_ids.index(c["item_id"])
        assert c["score_after"] == pytest.approx(float(ref[users.index(u), i]), rel=1e-5, abs=1e-5)
        assert c["score_before"] == pytest.approx(float(base[users.index(u), i]), rel=1e-5, abs=1e-5)
        if c["rank_after"] is not None:  # rank = 1 + non-training items scored higher
            masked = ref[users.index(u)].clone()
            masked[torch.as_tensor(ds.train.item[ds.train.user == u])] = -float("inf")
            assert c["rank_after"] == 1 + int((masked > masked[i]).sum())


def test_image_refresh_changes_that_items_score_and_top(recommender_client, tiny):
    from advrec_common.datasets.images import load_catalog_images

    _clear_overlay(tiny)
    model, ds, _ = _loaded(tiny)
    key, item = tiny.keys["train"], 7
    # the new image: another item's picture, so the extractor gives clearly different features
    new_image = load_catalog_images(ds.catalog, [20])[0]
    users = [ds.user_ids[0], ds.user_ids[1]]
    r = recommender_client.post(f"/v1/models/{key}/items/{ds.catalog.item_ids[item]}/image",
                                files={"image": ("new.png", png_bytes(new_image), "image/png")},
                                params={"users": users})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["overlay_items"] == 1 and [c["user_id"] for c in body["ranks"]] == users
    assert any(abs(c["score_after"] - c["score_before"]) > 1e-6 for c in body["ranks"])
    assert (tiny.home / "overlays" / key / "overlay.npz").is_file()
    # later top calls use the overlay: the item's score in the top list follows the new image
    score = recommender_client.post(f"/v1/models/{key}/score", json={
        "users": [users[0]], "items": [{"item_id": ds.catalog.item_ids[0], "features": [0.0] * 128}]}).json()
    assert score["changes"][0]["score_before"] is not None
    top = recommender_client.get(f"/v1/models/{key}/users/{users[0]}/top", params={"k": 29}).json()
    assert top["overlay_items"] == 1
    listed = {it["item_index"]: it["score"] for it in top["items"]}
    if item in listed:
        assert listed[item] == pytest.approx(body["ranks"][0]["score_after"], rel=1e-5, abs=1e-5)
    _clear_overlay(tiny)


@pytest.mark.parametrize(
    ("case", "status"),
    [("unknown_user", 404), ("k0", 422), ("k_neg", 422), ("unknown_model", 404), ("bad_key", 422),
     ("escape", 404)],
)
def test_top_errors(recommender_client, tiny, case, status):
    _, ds, _ = _loaded(tiny)
    key, user, k = tiny.keys["train"], ds.user_ids[0], 5
    if case == "unknown_user":
        user = "nobody"
    elif case == "k0":
        k = 0
    elif case == "k_neg":
        k = -3
    elif case == "unknown_model":
        key = "c" * 64
    elif case == "bad_key":
        key = "..abc"
    elif case == "escape":  # decoded to a path that matches no route
        key = "..%2F..%2Fetc"
    r = recommender_client.get(f"/v1/models/{key}/users/{user}/top", params={"k": k})
    assert r.status_code == status, r.text
    assert r.json()["title"] in ("Not found", "Invalid input")


@pytest.mark.parametrize(
    ("case", "status"),
    [("nan", 422), ("wrong_dim", 422), ("unknown_item", 404), ("unknown_user", 404), ("duplicate", 422),
     ("beyond_float32", 422), ("scores_overflow", 422), ("too_many_pairs", 422)],
)
def test_score_errors_change_nothing(recommender_client, tiny, case, status):
    _, ds, _ = _loaded(tiny)
    item = {"item_id": ds.catalog.item_ids[1], "features": [0.5] * 128}
    body = {"users": [ds.user_ids[0]], "items": [item]}
    if case == "nan":
        item["features"] = [float("nan")] + [0.5] * 127
    elif case == "wrong_dim":
        item["features"] = [0.5] * 64
    elif case == "unknown_item":
        item["item_id"] = "nope"
    elif case == "unknown_user":
        body["users"] = ["nobody"]
    elif case == "duplicate":
        body["items"] = [item, item]
    elif case == "beyond_float32":  # a float64 the model would read as inf (it answered score_after: null)
        item["features"] = [1e300] * 128
    elif case == "scores_overflow":  # each value a float32, their dot products not
        item["features"] = [3e38] * 128
    elif case == "too_many_pairs":  # 10,000 x 10,000 rows in the answer
        body["users"] = [ds.user_ids[0]] * 400
        body["items"] = [{"item_id": ds.catalog.item_ids[i % 30], "features": [0.5] * 128} for i in range(300)]
    before = store_snapshot(tiny.home)

    r = recommender_client.post(f"/v1/models/{tiny.keys['train']}/score", content=json.dumps(body, allow_nan=True),
                                headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert store_snapshot(tiny.home) == before


@pytest.mark.parametrize(("case", "status"), [("corrupt", 422), ("unknown_item", 404), ("unknown_user", 404),
                                              ("huge", 422)])
def test_image_refresh_errors_write_no_overlay(recommender_client, tiny, case, status):
    from advrec_common.settings import get_settings

    _clear_overlay(tiny)
    _, ds, _ = _loaded(tiny)
    item, params = ds.catalog.item_ids[3], {}
    payload = png_bytes(np.full((32, 32, 3), 200, dtype=np.uint8))
    if case == "corrupt":
        payload = payload[:40]
    elif case == "unknown_item":
        item = "nope"
    elif case == "unknown_user":
        params = {"users": ["nobody"]}
    elif case == "huge":
        small = tiny.settings.model_copy(update={"max_image_pixels": 10 * 10})
        recommender_client.app.dependency_overrides[get_settings] = lambda: small
    before = store_snapshot(tiny.home)
    r = recommender_client.post(f"/v1/models/{tiny.keys['train']}/items/{item}/image",
                                files={"image": ("x.png", payload, "image/png")}, params=params)
    assert r.status_code == status, r.text
    assert store_snapshot(tiny.home) == before and not (tiny.home / "overlays").exists()


def test_scores_are_the_same_whatever_the_user_batch(tiny):
    from services.recommender.serving import ModelContext, score_changes

    _clear_overlay(tiny)
    _, ds, _ = _loaded(tiny)
    ctx = ModelContext(tiny.store, tiny.home, tiny.keys["train"])
    before = ctx.item_state(None)
    after = ctx.item_state({"items": np.asarray([4]), "features": np.full((1, 128), 0.25, dtype=np.float32)})
    users, items, ids = torch.arange(7), torch.tensor([4, 9]), list(ds.user_ids[:7])
    whole = score_changes(ctx, users, items, before, after, ids)
    assert len(whole) == 14 and any(c.score_before != c.score_after for c in whole)
    batched = score_changes(ctx, users, items, before, after, ids, user_batch=2)
    # the same rows and ranks; scores within float32 rounding (a matmul's sums depend on its block shape)
    assert [(c.user_id, c.item_id, c.rank_before, c.rank_after) for c in batched] == \
        [(c.user_id, c.item_id, c.rank_before, c.rank_after) for c in whole]
    assert np.allclose([(c.score_before, c.score_after) for c in batched],
                       [(c.score_before, c.score_after) for c in whole], rtol=1e-5, atol=1e-9)
