"""The extractor service's screening route: a shop's defense applied to uploads, the purified
features, a detector's score and flag; the same limits and error model as the other routes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.services.conftest import png_bytes, store_snapshot


def _catalog_images(tiny, n):
    from advrec_common.datasets.artifact import load_dataset_artifact
    from advrec_common.datasets.images import load_catalog_images

    ds = load_dataset_artifact(tiny.store, tiny.keys["dataset"])
    return load_catalog_images(ds.catalog, list(range(n)))


def _files(images):
    return [("images", (f"img{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(images)]


def _store_defense(tiny, module, spec, extractor):
    """A fitted defense artifact in the tiny store (as a run's defense step would leave it)."""
    from advrec_common.store import artifact_key
    from advrec_common.vision.defenses.artifact import write_defense_artifact

    key = artifact_key("defense", {"test": spec.params(), "config": module.config()}, [extractor])
    if not tiny.store.has(key):
        with tiny.store.writing(key, {"kind": "defense", "step": "defense/test"}) as out:
            write_defense_artifact(out, module, spec, {"test": True}, extractor=extractor)
    return key


def _expected(tiny, module, images, size):
    from advrec_common.datasets.images import resize_image
    from advrec_common.vision.artifact import load_extractor_artifact
    from services.extractor.screening import screen_images

    model = load_extractor_artifact(tiny.store, tiny.keys["extractor"])
    return screen_images(model, module, np.stack([resize_image(im, size) for im in images]))


def test_screen_a_transform_given_as_its_spec(extractor_client, tiny):
    from advrec_common.vision.defenses.jpeg import Jpeg

    images = _catalog_images(tiny, 3)
    data = {"extractor": tiny.keys["extractor"], "spec": json.dumps({"kind": "jpeg", "quality": 60})}
    r = extractor_client.post("/v1/screen", data=data, files=_files(images))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["kind"], body["label"], body["defense"], body["threshold"]) == ("jpeg", "jpeg-q60", None, None)
    assert body["image_size"] == 64  # the extractor's own input size
    expected = _expected(tiny, Jpeg(60), images, 64)
    got = np.asarray([it["features"] for it in body["items"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected.features, rtol=1e-4, atol=1e-5)
    assert [it["class_index"] for it in body["items"]] == expected.classes.tolist()
    assert all(it["score"] is None and it["flagged"] is None for it in body["items"])


def test_screen_through_a_fitted_detector_answers_score_and_flag(extractor_client, tiny):
    from advrec_common.vision.defenses.detector import Detector
    from advrec_common.vision.defenses.spec import DefenseSpec

    images = _catalog_images(tiny, 6)
    probe = _expected(tiny, Detector(threshold=2.0), images, 32)  # scores; 2 (the largest L1) flags none
    threshold = float(np.median(probe.scores))  # flags about half of them
    key = _store_defense(tiny, Detector(threshold=threshold), DefenseSpec(kind="detector"), tiny.keys["extractor"])
    r = extractor_client.post("/v1/screen", data={"extractor": tiny.keys["extractor"], "defense": key,
                                                  "image_size": "32", "encoding": "base64"},
                              files=_files(images))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["defense"], body["kind"], body["threshold"]) == (key, "detector", threshold)
    scores = np.asarray([it["score"] for it in body["items"]])
    np.testing.assert_allclose(scores, probe.scores, rtol=1e-4, atol=1e-6)
    flags = [it["flagged"] for it in body["items"]]
    assert flags == (probe.scores > threshold).tolist() and 0 < sum(flags) < len(flags)
    assert all(it["features_b64"] and it["features"] is None for it in body["items"])


def test_screen_through_a_denoiser_purifies_the_features(extractor_client, tiny):
    from advrec_common.vision.defenses.denoiser import Denoiser
    from advrec_common.vision.defenses.spec import DefenseSpec

    torch.manual_seed(0)
    den = Denoiser(width=4, depth=2)
    torch.nn.init.normal_(den.residual[-1].weight, std=0.1)
    key = _store_defense(tiny, den, DefenseSpec(kind="denoiser", width=4, depth=2), tiny.keys["extractor"])
    images = _catalog_images(tiny, 2)
    r = extractor_client.post("/v1/screen", data={"extractor": tiny.keys["extractor"], "defense": key},
                              files=_files(images))
    plain = extractor_client.post("/v1/extract", data={"extractor": tiny.keys["extractor"], "image_size": "64"},
                                  files=_files(images))
    assert r.status_code == 200 and plain.status_code == 200, r.text
    got = np.asarray([it["features"] for it in r.json()["items"]])
    np.testing.assert_allclose(got, _expected(tiny, den, images, 64).features, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, np.asarray([it["features"] for it in plain.json()["items"]]), atol=1e-4)


@pytest.mark.parametrize(
    ("case", "status", "says"),
    [("neither", 422, "exactly one of"), ("both", 422, "exactly one of"), ("not_json", 422, "not JSON"),
     ("bad_spec", 422, "spec.quality"), ("fitted_kind", 422, "pass the key"), ("unknown_key", 404, "not in the store"),
     ("wrong_kind", 422, "'dataset' artifact"), ("bad_key", 422, ""), ("other_extractor", 422, "fitted for extractor"),
     ("corrupt", 422, ""), ("huge_bytes", 413, "larger than the limit"), ("too_many", 422, "at most")],
)
def test_screen_errors_change_nothing(extractor_client, tiny, case, status, says):
    from advrec_common.vision.defenses.detector import Detector
    from advrec_common.vision.defenses.spec import DefenseSpec

    images = _catalog_images(tiny, 1)
    data = {"extractor": tiny.keys["extractor"], "spec": json.dumps({"kind": "bit_depth", "bits": 3})}
    files = _files(images)
    if case == "neither":
        data.pop("spec")
    elif case == "both":
        data["defense"] = "0" * 64
    elif case == "not_json":
        data["spec"] = "{kind: jpeg"
    elif case == "bad_spec":
        data["spec"] = json.dumps({"kind": "jpeg", "quality": 500})
    elif case == "fitted_kind":
        data["spec"] = json.dumps({"kind": "detector"})
    elif case in ("unknown_key", "wrong_kind", "bad_key", "other_extractor"):
        data.pop("spec")
        data["defense"] = {"unknown_key": "0" * 64, "wrong_kind": tiny.keys["dataset"], "bad_key": "../../x"}.get(
            case) or _store_defense(tiny, Detector(threshold=0.5), DefenseSpec(kind="detector"), "9" * 64)
    elif case == "corrupt":
        files = [("images", ("x.png", png_bytes(images[0])[:60], "image/png"))]
    elif case == "huge_bytes":
        files = [("images", ("big.png", b"\x89PNG" + bytes(tiny.settings.max_upload_bytes), "image/png"))]
    elif case == "too_many":
        files = _files(images) * 257
    before = store_snapshot(tiny.home)
    r = extractor_client.post("/v1/screen", data=data, files=files)
    assert r.status_code == status, r.text
    problem = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert says in problem["detail"] + json.dumps(problem.get("errors", []))
    assert store_snapshot(tiny.home) == before
