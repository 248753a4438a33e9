"""Attacker service: registry, attacked uploads within budget, catalog attacks, errors that change nothing."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.services.conftest import png_bytes, store_snapshot


def _images(tiny, idx):
    from advrec_common.datasets.artifact import load_dataset_artifact
    from advrec_common.datasets.images import load_catalog_images

    ds = load_dataset_artifact(tiny.store, tiny.keys["dataset"])
    return ds, load_catalog_images(ds.catalog, list(idx))


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def test_registry_lists_attacks_with_parameters(attacker_client):
    attacks = {a["name"]: a for a in attacker_client.get("/v1/attacks").json()}
    assert {"fgsm", "pgd", "cw"} <= set(attacks)
    assert attacks["cw"]["unbounded_ok"] is True and "l2" in attacks["cw"]["norms"]
    assert "eps" in attacks["pgd"]["parameters"] and "steps" in attacks["pgd"]["parameters"]


@pytest.mark.parametrize("eps", [4, 8])
def test_upload_attack_stays_within_budget(attacker_client, tiny, eps):
    _, clean = _images(tiny, [0, 1])
    files = [("images", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(clean)]
    spec = {"method": "pgd", "eps": eps, "steps": 3}
    r = attacker_client.post("/v1/attack", files=files,
                             data={"extractor": tiny.keys["extractor"], "spec": json.dumps(spec), "target": "class1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["attack"] == f"pgd-linf-eps{eps}" and body["target"] == "class1" and len(body["images"]) == 2
    diffs = [np.abs(_decode(im["image_b64"]) - clean[i].astype(np.int16)).max() for i, im in enumerate(body["images"])]
    assert max(diffs) <= eps and max(diffs) > 0  # 8-bit delivery is exactly inside the L-inf budget
    assert body["images"][0]["measurements"] and isinstance(body["summary"], dict)


def test_catalog_attack_by_item_id(attacker_client, tiny):
    ds, clean = _images(tiny, [2])
    req = {"dataset": tiny.keys["dataset"], "items": [ds.catalog.item_ids[2]], "extractor": tiny.keys["extractor"],
           "spec": {"method": "fgsm", "eps": 4}, "target": "class0"}
    r = attacker_client.post("/v1/attack/catalog", json=req)
    assert r.status_code == 200, r.text
    img = r.json()["images"][0]
    assert img["item_id"] == ds.catalog.item_ids[2]
    assert np.abs(_decode(img["image_b64"]) - clean[0].astype(np.int16)).max() <= 4


@pytest.mark.parametrize(
    ("change", "status"),
    [({"spec": '{"method": "nope", "eps": 4}'}, 422), ({"spec": "not json"}, 422), ({"target": "zebra"}, 422),
     ({"extractor": "a" * 64}, 404), ({"spec": '{"method": "pgd", "eps": -1}'}, 422), ({"corrupt": True}, 422)],
)
def test_upload_errors_change_nothing(attacker_client, tiny, change, status):
    _, clean = _images(tiny, [0])
    data = {"extractor": tiny.keys["extractor"], "spec": '{"method": "fgsm", "eps": 4}', "target": "class1"}
    data.update({k: v for k, v in change.items() if k != "corrupt"})
    payload = png_bytes(clean[0])[:50] if change.get("corrupt") else png_bytes(clean[0])
    before = store_snapshot(tiny.home)
    r = attacker_client.post("/v1/attack", files=[("images", ("a.png", payload, "image/png"))], data=data)
    assert r.status_code == status, r.text
    assert store_snapshot(tiny.home) == before


def test_catalog_unknown_item_is_404(attacker_client, tiny):
    req = {"dataset": tiny.keys["dataset"], "items": ["no-such-item"], "extractor": tiny.keys["extractor"],
           "spec": {"method": "fgsm", "eps": 4}, "target": "class0"}
    assert attacker_client.post("/v1/attack/catalog", json=req).status_code == 404


def test_spec_problems_are_listed_with_their_paths(attacker_client, tiny):
    ds, _ = _images(tiny, [2])
    req = {"dataset": tiny.keys["dataset"], "items": [ds.catalog.item_ids[2]], "extractor": tiny.keys["extractor"],
           "spec": {"method": "pgd", "eps": -1, "steps": 0, "cw_lr": "x"}, "target": "class0"}
    r = attacker_client.post("/v1/attack/catalog", json=req)
    assert r.status_code == 422
    assert {e["loc"] for e in r.json()["errors"]} >= {"spec.eps", "spec.steps", "spec.cw_lr"}, r.json()


def test_a_budget_in_0_1_units_is_refused_as_specs_refuse_it(attacker_client, tiny):
    """eps 0.03 (a torchattacks user's 8/255) is a fraction of one grey level: the service says so, as specs and
    the CLI do, instead of attacking with nothing."""
    ds, _ = _images(tiny, [2])
    body = {"dataset": tiny.keys["dataset"], "items": [ds.catalog.item_ids[2]], "extractor": tiny.keys["extractor"],
            "spec": {"method": "pgd", "eps": 0.03}, "target": "class0"}
    r = attacker_client.post("/v1/attack/catalog", json=body)
    assert r.status_code == 422
    errors = r.json()["errors"]
    assert any(e["loc"] == "spec.eps" and "did you mean 7.65" in e["msg"] for e in errors), errors


def test_one_request_is_bounded_in_work(attacker_client, tiny):
    """The service runs one attack at a time and a request cannot be cancelled: one costing more
    than max_sync_attack_passes is a 413 before any pass, pointing at jobs."""
    from advrec_common.settings import get_settings

    ds, clean = _images(tiny, [0, 1])
    side = clean.shape[1]
    per_image = get_settings().max_sync_attack_passes * 224 * 224 // (side * side)  # passes one image may take
    req = {"dataset": tiny.keys["dataset"], "items": [ds.catalog.item_ids[0], ds.catalog.item_ids[1]],
           "extractor": tiny.keys["extractor"], "spec": {"method": "pgd", "eps": 8, "steps": per_image // 2 + 1},  # two images: just above
           "target": "class0"}
    before = store_snapshot(tiny.home)
    r = attacker_client.post("/v1/attack/catalog", json=req)
    assert r.status_code == 413 and "POST /v1/jobs" in r.json()["detail"], r.text
    sized = {**req, "dataset": "f" * 64, "image_size": side}  # a known size: refused before the dataset is read
    r = attacker_client.post("/v1/attack/catalog", json=sized)
    assert r.status_code == 413, r.text
    files = [("images", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(clean)]
    r = attacker_client.post("/v1/attack", files=files, data={
        "extractor": tiny.keys["extractor"], "spec": json.dumps(req["spec"]), "target": "class1"})
    assert r.status_code == 413, r.text
    assert store_snapshot(tiny.home) == before
