"""Admission: the gateway answers 422/413/429 before it queues anything, with one problem body; and a
request that used to be a 500 is a 4xx now."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from .conftest import API_KEY, TINY_SPEC

pytestmark = pytest.mark.stack


def _raw(client, body: str):
    return client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})


def _nothing_recorded(settings) -> bool:
    runs = settings.runs_dir
    return not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize(("change", "loc"), [
    ({"attacks": [{"method": "pgd", "eps": [8], "steps": 10**9}]}, "attacks[0].steps"),
    ({"recommenders": [{"name": "vbpr", "config": {"epochs": 10**9}}]}, "recommenders[0].config.epochs"),
    ({"ks": [5, 10**9]}, "ks[1]"),
    ({"seed": 2**70}, "seed"),  # was a worker's "Overflow when unpacking long long"
    ({"attacks": [{"method": "fgsm", "eps": [8], "params": {"cw_c": 1e300}}]}, "attacks[0].params.cw_c"),
    ({"recommenders": [{"name": "vbpr", "config": {"lr": [0.1, -1]}}]}, "recommenders[0].config.lr[1]"),
])
def test_out_of_bounds_specs_are_422_with_their_path(gateway_client, settings, change, loc):
    r = gateway_client.post("/v1/jobs", json={**TINY_SPEC, **change})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert loc in [e["loc"] for e in r.json()["errors"]], r.json()
    assert _nothing_recorded(settings)


@pytest.mark.parametrize(("old", "new", "loc"), [
    ('"eps": [8]', '"eps": [1e999]', "attacks[0].eps[0]"),  # was accepted, failed at the report step
    ('"epochs": 5', '"epochs": 5, "adv_lambda": NaN', "recommenders[0].config.adv_lambda"),  # was stored as null
    ('"epochs": 5', '"epochs": 5, "adv_eps": Infinity', "recommenders[0].config.adv_eps"),
])
def test_nan_and_inf_are_422(gateway_client, settings, old, new, loc):
    body = json.dumps(TINY_SPEC)
    assert old in body
    r = _raw(gateway_client, body.replace(old, new))
    assert r.status_code == 422 and loc in [e["loc"] for e in r.json()["errors"]], r.text
    assert _nothing_recorded(settings)


@pytest.mark.parametrize("depth", [40, 900, 20000])
def test_deep_nesting_is_a_4xx_problem_not_a_500(gateway_client, settings, depth):
    body = json.dumps({**TINY_SPEC, "attacks": [{"method": "fgsm", "eps": [8], "params": "X"}]})
    r = _raw(gateway_client, body.replace('"X"', '{"a": ' * depth + "1" + "}" * depth))
    assert r.status_code in (400, 422), r.text
    r = gateway_client.post("/v1/jobs", content=body.replace('"X"', '{"a": ' * depth + "1" + "}" * depth),
                            headers={"content-type": "application/json", "Idempotency-Key": f"deep-{depth}"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["type"].startswith("urn:advrec:problem:")
    assert _nothing_recorded(settings)


def test_a_catalog_above_the_quotas_is_413(gateway_client, settings):
    from gateway.app import create_app

    huge = {**TINY_SPEC, "dataset": {"kind": "demo", "n_items": 200_000, "n_users": 100, "image_size": 512}}
    r = gateway_client.post("/v1/jobs", json=huge)  # 200,000 x 512 px: ~157 GB in memory
    assert r.status_code == 413 and "quota_catalog_items" in r.json()["detail"], r.text
    small_quota = settings.model_copy(update={"quota_image_pixels": 128 * 128})
    big_images = {**TINY_SPEC, "extractors": [{"name": "standard", "image_size": 256}]}
    with TestClient(create_app(small_quota, reconcile_on_start=False)) as client:
        client.headers["X-API-Key"] = API_KEY
        r = client.post("/v1/jobs", json=big_images)
    assert r.status_code == 413 and "quota_image_pixels" in r.json()["detail"], r.text
    assert _nothing_recorded(settings)


def test_product_photos_over_512_px_are_admitted_at_the_size_the_models_see(gateway_client, settings):
    """The walkthrough's own spec with 800 x 600 product photos: every extractor resizes to 224 or 64 px,
    so the default 512^2 quota admits it (it answered 413 "processed at 480000 pixels each"); an
    image_size above the quota is still a 413 naming it."""
    import runpy
    from pathlib import Path

    import yaml
    from PIL import Image

    root = Path(__file__).resolve().parents[2] / "examples" / "own_catalog"
    sample = runpy.run_path(str(root / "make_sample.py"))
    paths = sample["write_sample_catalog"](settings.home / "datasets" / "shop", n_items=20, n_users=30, image_size=32)
    for photo in paths["images_dir"].iterdir():
        Image.open(photo).resize((800, 600)).save(photo)
    spec = yaml.safe_load((root / "spec.yaml").read_text())  # dataset paths shop/...: the server's datasets folder
    r = gateway_client.post("/v1/jobs:validate", json=spec)
    assert r.status_code == 200, r.text
    assert r.json()["facts"]["max_image_pixels"] == 800 * 600 > settings.quota_image_pixels
    spec["extractors"][1]["image_size"] = 600
    r = gateway_client.post("/v1/jobs:validate", json=spec)
    assert r.status_code == 413 and "at 360000 pixels each" in r.json()["detail"], r.text
    assert _nothing_recorded(settings)


def test_plan_steps_and_unfinished_jobs_quotas(settings, tmp_path):
    from gateway.app import create_app

    tight = settings.model_copy(update={"quota_plan_steps": 8, "quota_concurrent_jobs": 2})
    with TestClient(create_app(tight, reconcile_on_start=False)) as client:
        client.headers["X-API-Key"] = API_KEY
        r = client.post("/v1/jobs", json=TINY_SPEC)  # 10 steps
        assert r.status_code == 422 and "quota_plan_steps" in r.json()["detail"], r.text
        small = {**TINY_SPEC, "modes": ["retrain"]}  # 9 steps... still above 8
        assert client.post("/v1/jobs", json=small).status_code == 422
        ok = tight.model_copy(update={"quota_plan_steps": 50})
        client.app.state.settings = ok
        ids = [client.post("/v1/jobs", json=TINY_SPEC).json()["id"] for _ in range(2)]
        r = client.post("/v1/jobs", json=TINY_SPEC)
        assert r.status_code == 429 and r.headers["retry-after"] and "quota_concurrent_jobs" in r.json()["detail"]
        client.delete(f"/v1/jobs/{ids[0]}")  # a cancelled job frees its slot
        assert client.post("/v1/jobs", json=TINY_SPEC).status_code == 202


def test_key_quotas_override_the_defaults_for_one_key_only(settings):
    from advrec_common.apikeys import hash_key
    from gateway.app import create_app

    big_key = "big-customer-key-0123"
    per_key = settings.model_copy(update={
        "api_key_hashes": [*settings.api_key_hashes, hash_key(big_key)], "quota_concurrent_jobs": 1,
        "key_quotas": {hash_key(big_key): {"concurrent_jobs": 3}, hash_key(API_KEY): {"plan_steps": 8}},
    })
    with TestClient(create_app(per_key, reconcile_on_start=False)) as client:
        client.headers["X-API-Key"] = API_KEY
        r = client.post("/v1/jobs", json=TINY_SPEC)  # 10 steps, above this key's 8
        assert r.status_code == 422 and "key_quotas[" in r.json()["detail"] and ".plan_steps" in r.json()["detail"]
        client.headers["X-API-Key"] = big_key  # plan_steps: the default; concurrent jobs: 3, not 1
        assert [client.post("/v1/jobs", json=TINY_SPEC).status_code for _ in range(3)] == [202] * 3
        r = client.post("/v1/jobs", json=TINY_SPEC)
        assert r.status_code == 429 and "key_quotas[" in r.json()["detail"], r.text


def test_key_quotas_must_be_keyed_by_digests():
    from pydantic import ValidationError

    from advrec_common.settings import Settings

    with pytest.raises(ValidationError, match="SHA-256 hex digests"):
        Settings(key_quotas={"my-clear-text-key": {"concurrent_jobs": 2}})
    with pytest.raises(ValidationError, match="extra"):
        Settings(key_quotas={"a" * 64: {"concurent_jobs": 2}})


def test_preflight_problems_are_422_and_never_show_server_paths(gateway_client, settings):
    spec = {**TINY_SPEC, "dataset": {"kind": "generic", "images_dir": "shop/images", "interactions": "shop/i.csv"}}
    r = gateway_client.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    assert "does not exist" in r.text and "<home>/datasets/shop/images" in r.text
    assert str(settings.home) not in r.text and str(settings.home.resolve()) not in r.text
    assert _nothing_recorded(settings)


def test_a_training_request_whose_config_does_not_fit_the_model_is_422_before_anything_is_recorded(
        gateway_client, settings):
    """POST /v1/models checks the config against the recommender (lr/regs blocks, fields other models
    read) like a spec's recommenders[] are checked: every problem at once, no job recorded."""
    body = {"dataset": "0" * 64, "recommender": "vbpr", "config": {"lr": [0.1, 0.2], "adv_eps": 0.5}}
    r = gateway_client.post("/v1/models", json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [e["loc"] for e in errors] == ["config", "config"]
    assert errors[0]["msg"].startswith("config.lr: vbpr takes one value for all its parameters or one per block: 3")
    assert errors[1]["msg"] == "vbpr does not use config adv_eps (read only by adv_eps: amr)"
    assert _nothing_recorded(settings)


def test_nul_in_an_artifact_path_is_404(gateway_client, settings):
    from advrec.pipeline.record import RunRecord
    from advrec_common.apikeys import owner_id

    rec = RunRecord.create(settings.runs_dir, {"name": "x"}, executor="celery", owner=owner_id(API_KEY))
    rec.set_state("done")
    (rec.dir / "report").mkdir()
    assert gateway_client.get(f"/v1/jobs/{rec.run_id}/artifacts/a%00b").status_code == 404


def test_validate_runs_every_admission_check_and_queues_nothing(gateway_client, settings):
    noted = {**TINY_SPEC, "dataset": {**TINY_SPEC["dataset"], "kcore": 5}}  # kcore: generic datasets only
    r = gateway_client.post("/v1/jobs:validate", json=noted)
    assert r.status_code == 200, r.text
    check = r.json()
    from advrec.pipeline.dag import plan
    from advrec.pipeline.spec import parse_spec

    assert check["valid"] and check["name"] == "tiny" and check["steps"] == len(plan(parse_spec(noted), 60))
    assert check["facts"]["n_items"] == 60
    assert [w["loc"] for w in check["warnings"]] == ["dataset.kcore"] and "ignored" in check["warnings"][0]["msg"]
    assert _nothing_recorded(settings)
    # a mistake answers exactly what the submit would: 422, every problem with its path
    bad = {**TINY_SPEC, "ks": [5, 10**9], "attacks": [{"method": "pgd", "eps": [0.03]}]}
    r = gateway_client.post("/v1/jobs:validate", json=bad)
    submitted = gateway_client.post("/v1/jobs", json=bad)
    assert r.status_code == submitted.status_code == 422
    assert {e["loc"] for e in r.json()["errors"]} == {e["loc"] for e in submitted.json()["errors"]} \
        >= {"ks[1]", "attacks[0].eps"}
    assert gateway_client.post("/v1/jobs:validate", json={"preset": "nope"}).status_code == 422
    assert _nothing_recorded(settings)


def test_a_submitted_job_keeps_its_admission_warnings(gateway_client):
    noted = {**TINY_SPEC, "dataset": {**TINY_SPEC["dataset"], "kcore": 5}}
    r = gateway_client.post("/v1/jobs", json=noted)
    assert r.status_code == 202, r.text
    assert [w["loc"] for w in r.json()["warnings"]] == ["dataset.kcore"]
    assert [w["loc"] for w in gateway_client.get(f"/v1/jobs/{r.json()['id']}").json()["warnings"]] == ["dataset.kcore"]
    clean = gateway_client.post("/v1/jobs", json=TINY_SPEC).json()
    assert clean["warnings"] == []


def test_an_idempotency_key_names_one_request_body(gateway_client, settings):
    key = {"Idempotency-Key": "batch-7"}
    first = gateway_client.post("/v1/jobs", json=TINY_SPEC, headers=key)
    assert first.status_code == 202, first.text
    reordered = dict(reversed(list(TINY_SPEC.items())))  # the same body, keys in another order
    assert gateway_client.post("/v1/jobs", json=reordered, headers=key).json()["id"] == first.json()["id"]
    # the key reused for another body: 422, never the first body's job (and nothing new is recorded)
    other = gateway_client.post("/v1/jobs", json={**TINY_SPEC, "seed": 1}, headers=key)
    assert other.status_code == 422 and other.json()["errors"][0]["loc"] == "Idempotency-Key", other.text
    invalid = gateway_client.post("/v1/jobs", json={**TINY_SPEC, "ks": [0]}, headers=key)
    assert invalid.status_code == 422
    assert [j["id"] for j in gateway_client.get("/v1/jobs").json()] == [first.json()["id"]]
