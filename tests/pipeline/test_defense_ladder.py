"""The defense ladder end to end in-process: rungs in front of an extractor, each against the adaptive and the
non-adaptive attacker, a detector's rule for flagged uploads, the ladder in results.json, its table and (l)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from advrec.pipeline.dag import plan
from advrec.pipeline.executor import run_inprocess
from advrec.pipeline.spec import parse_spec
from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore
from services.attacker.artifacts import load_adversarial
from services.extractor.artifacts import load_features

SPEC = {
    "name": "ladder",
    "dataset": {"kind": "demo", "n_items": 80, "n_users": 80, "image_size": 32, "seed": 3},
    "extractors": [{"name": "standard", "demo_images_per_class": 20, "epochs": 2}],
    "attacks": [{"method": "pgd", "eps": [16], "steps": 3}],
    "recommenders": [{"name": "vbpr", "config": {"epochs": 3}}, {"name": "amr", "config": {"epochs": 3}}],
    "ks": [5, 10], "shard_size": 40, "gallery_users": 0, "modes": ["deployment"],
    "defenses": [{"kind": "jpeg", "quality": 50}, {"kind": "resize_pad", "eot_draws": 10},
                 {"kind": "detector", "fpr": 0.2}, {"kind": "denoiser", "epochs": 1, "name": "dn"}],
    "promotion": {"items": {"least_exposed": 4}, "attacks": [{"method": "insa", "eps": [8], "steps": 3}]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    store = ArtifactStore(home / "store")
    record = run_inprocess(parse_spec(SPEC), store, home / "runs", show_progress=False)
    assert record.read()["state"] == "done", record.read()["error"]
    keys = {n: s["key"] for n, s in record.read()["steps"].items()}
    return store, keys, record, json.loads((record.dir / "report" / "results.json").read_text())


def test_each_rung_is_planned_against_both_attackers():
    names = [s.name for s in plan(parse_spec(SPEC), 80)]
    for rung in ("jpeg-q50", "resize_pad-0.875", "detector-fpr0.2", "dn"):
        assert f"defense/{rung}" in names and f"features/{rung}" in names and f"train/{rung}/vbpr" in names
        assert f"attack/{rung}/pgd/eps16/shard0" in names  # adaptive: attacked through the defense
        assert f"adversarial/{rung}.nonadaptive/pgd/eps16" in names  # non-adaptive: the bare attack, delivered
        assert f"train/{rung}.nonadaptive/vbpr" not in names  # it reads its rung's models
        assert f"promote/{rung}/insa/eps8/vbpr" in names and f"promote/{rung}.nonadaptive/insa/eps8/vbpr/from-standard" in names
    p = plan(parse_spec(SPEC), 80)
    assert p["adversarial/jpeg-q50.nonadaptive/pgd/eps16"].kind == "transfer"
    assert p["adversarial/jpeg-q50.nonadaptive/pgd/eps16"].inputs["source"] == "adversarial/standard/pgd/eps16"


def test_the_non_adaptive_attacker_delivers_the_bare_extractors_images(run):
    store, keys, _, results = run
    bare = load_adversarial(store, keys["adversarial/standard/pgd/eps16"])
    moved = load_adversarial(store, keys["adversarial/jpeg-q50.nonadaptive/pgd/eps16"])
    adaptive = load_adversarial(store, keys["adversarial/jpeg-q50/pgd/eps16"])
    assert np.array_equal(moved.items, bare.items) and np.array_equal(moved.images_u8(), bare.images_u8())
    assert not np.array_equal(adaptive.images_u8(), bare.images_u8())  # the adaptive attacker made its own
    views = results["extractors"]
    assert views["jpeg-q50"]["attacker"] == "adaptive" and views["jpeg-q50.nonadaptive"]["attacker"] == "non-adaptive"
    assert views["jpeg-q50"]["base"] == "standard" and views["jpeg-q50"]["defense"] == "jpeg"
    assert all(views[v]["seconds_per_image"] > 0 for v in views)


def test_a_detectors_flagged_uploads_keep_their_clean_features(run):
    store, keys, _, _ = run
    clean = load_features(store, keys["features/detector-fpr0.2"])
    seen = []
    for cell in ("detector-fpr0.2/pgd/eps16", "detector-fpr0.2.nonadaptive/pgd/eps16"):
        adv = load_adversarial(store, keys[f"adversarial/{cell}"])
        flagged = [bool(r["flagged"]) for r in adv.table]
        assert len(flagged) == len(adv.items)
        for item, flag, row in zip(adv.items, flagged, adv.table, strict=True):
            same = np.array_equal(adv.features[item], np.asarray(clean.features)[item])
            assert same or not flag  # flagged: refused, the item keeps its clean features
            if flag:
                assert row["success"] is False
        assert adv.summary["flagged"] == pytest.approx(np.mean(flagged) if flagged else 0.0)
        seen += flagged
    assert any(seen) and not all(seen)  # the rule was exercised both ways


def test_the_ladder_its_table_and_finding(run):
    _, _, record, results = run
    lad = results["ladder"]
    rungs = {r["rung"] for r in lad["rows"]}
    assert rungs == {"jpeg-q50", "resize_pad-0.875", "detector-fpr0.2", "dn", "amr"}
    assert lad["recommender"] == "vbpr"
    for r in lad["rows"]:
        assert r["clean"]["hr@10"]["mean"] is not None and r["cost_points"]["hr@10"] is not None
    det = next(r for r in lad["rows"] if r["rung"] == "detector-fpr0.2")
    assert det["detector"]["fpr_held_out"] is not None and det["flagged_adaptive"] is not None
    with (record.dir / "report" / "tables" / "ladder.csv").open() as fh:
        assert [row["rung"] for row in csv.DictReader(fh)] == [r["rung"] for r in lad["rows"]]
    (ladder_finding,) = [f for f in results["findings"] if f["id"] == "l"]
    assert ladder_finding["answer"] in ("yes", "partly", "no", "n/a")
    assert ("Nothing to protect" in ladder_finding["statement"]) == (lad["threat"] is None)
    assert "defense ladder" in (record.dir / "report" / "summary.txt").read_text()


def test_ladder_specs_are_checked_before_any_work():
    with pytest.raises(InvalidInput, match="detector, and attacks \\['cw'\\] read logits only"):
        parse_spec({**SPEC, "attacks": [{"method": "cw", "eps": [0], "norm": "l2"}], "defenses": [{"kind": "detector"}]})
    with pytest.raises(InvalidInput, match="extractor 'madry' is not an extractor"):
        parse_spec({**SPEC, "defenses": [{"kind": "jpeg", "extractor": "madry"}]})
    with pytest.raises(InvalidInput, match="is used twice"):
        parse_spec({**SPEC, "defenses": [{"kind": "jpeg"}, {"kind": "jpeg"}]})
    with pytest.raises(InvalidInput, match="taken by an extractor"):
        parse_spec({**SPEC, "defenses": [{"kind": "jpeg", "name": "standard"}]})
    with pytest.raises(InvalidInput, match="jpeg does not use bits"):
        parse_spec({**SPEC, "defenses": [{"kind": "jpeg", "bits": 3}]})
    assert [d.name for d in parse_spec(SPEC).defenses] == ["jpeg-q50", "resize_pad-0.875", "detector-fpr0.2", "dn"]


def test_a_random_defense_ingests_the_same_features_whatever_ran_before_in_the_process(run, tmp_path):
    """resize_pad draws at random as the shop ingests images: from a generator seeded by the step, so the rung's
    clean features do not depend on what a worker process loaded or ran before (they had differed between two
    `advrec run defenses` with two steps at once: loading a model initialises its layers from torch's global
    RNG, and whether a worker had the model cached decided the draws)."""
    import shutil

    import torch

    from advrec.pipeline.executor import execute_step

    store, keys, _, _ = run
    p = plan(parse_spec(SPEC), 80)
    step = p["features/resize_pad-0.875"]
    assert step.key == keys[step.name]
    features = []
    for i, history in enumerate((lambda: torch.manual_seed(1), lambda: torch.rand(12345))):
        shutil.copytree(store.root, tmp_path / f"store{i}")  # every input (and what they reference) ...
        fresh = ArtifactStore(tmp_path / f"store{i}")
        shutil.rmtree(fresh.path(step.key))  # ... but the step itself
        history()  # another process history before the step (and the models not cached in this store)
        before = torch.get_rng_state()
        assert execute_step(step, p, fresh)
        assert torch.equal(torch.get_rng_state(), before)  # the process's own state is restored
        features.append(np.asarray(load_features(fresh, step.key, arrays=True).features))
    assert np.array_equal(features[0], features[1])
    assert np.array_equal(features[0], np.asarray(load_features(store, step.key, arrays=True).features))
