"""Item promotion end to end in-process: the items, white-box and transfer attacks, placebos, both modes, the
tests in the run's family, the per-item tables and finding (p)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from advrec.pipeline.dag import plan
from advrec.pipeline.executor import run_inprocess
from advrec.pipeline.spec import parse_spec
from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore
from services.attacker.artifacts import load_perturbation
from services.recommender.artifacts import load_promoted_items

SPEC = {
    "name": "promo",
    "dataset": {"kind": "demo", "n_items": 80, "n_users": 80, "image_size": 32, "seed": 3},
    "extractors": [{"name": "standard", "demo_images_per_class": 20, "epochs": 2},
                   {"name": "pgd_at", "demo_images_per_class": 20, "epochs": 1}],
    "attacks": [{"method": "fgsm", "eps": [8]}],
    "recommenders": [{"name": "vbpr", "config": {"epochs": 3}}],
    "ks": [5, 10],
    "shard_size": 40,
    "gallery_users": 0,
    "promotion": {"items": {"least_exposed": 4},
                  "attacks": [{"method": "insa", "eps": [8], "steps": 3}, {"method": "insa_topk", "eps": [8], "steps": 3},
                              {"method": "expa", "eps": [8], "steps": 3}],
                  "transfer_from": "standard"},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    store = ArtifactStore(home / "store")
    record = run_inprocess(parse_spec(SPEC), store, home / "runs", show_progress=False)
    assert record.read()["state"] == "done", record.read()["error"]
    return store, record, json.loads((record.dir / "report" / "results.json").read_text())


def test_the_plan_has_attacks_placebos_and_evaluations_per_cell_and_mode():
    p = plan(parse_spec(SPEC), 80)
    names = [s.name for s in p]
    assert "promotion/items" in names
    for cell in ("standard/insa/eps8/vbpr", "pgd_at/insa/eps8/vbpr", "pgd_at/insa/eps8/vbpr/from-standard"):
        assert f"promote/{cell}" in names and f"promote/{cell}/placebo" in names
        for mode in ("retrain", "deployment"):
            assert f"promote_eval/{cell}/{mode}" in names and f"promote_eval/{cell}/placebo/{mode}" in names
    assert "promote/standard/insa/eps8/vbpr/from-standard" not in names  # no transfer onto the source itself
    assert p["promote/pgd_at/expa/eps8/vbpr/from-standard"].inputs["source"] == "promote/standard/expa/eps8/vbpr"


def test_white_box_attacks_have_one_image_per_replicate_and_stay_in_budget(run):
    store, record, results = run
    keys = {n: s["key"] for n, s in record.read()["steps"].items()}
    rows, info = load_promoted_items(store, keys["promotion/items"])
    assert len(rows) == 4 and info["category"] == results["scenario"]["origin"] and len(info["ids"]) == 4
    insa = load_perturbation(store, keys["promote/standard/insa/eps8/vbpr"])
    expa = load_perturbation(store, keys["promote/standard/expa/eps8/vbpr"])
    assert insa.images.shape[0] == 3 and expa.images.shape[0] == 1  # 3 replicates: one white-box image each
    assert np.array_equal(insa.items, rows)
    moved = load_perturbation(store, keys["promote/pgd_at/insa/eps8/vbpr/from-standard"])
    assert np.array_equal(moved.images, insa.images)  # the transfer delivers the source's images unchanged
    assert not np.allclose(moved.features, insa.features)  # ... and the other extractor reads them
    assert insa.summary["linf_max"] <= 8 / 255 + 1e-6


def test_results_tests_tables_and_the_finding(run):
    _, record, results = run
    promo = results["promotion"]
    assert promo["k"] == 10 and set(promo["modes"]) == {"retrain", "deployment"}
    attacks = [e for e in promo["evaluations"] if e["control"] == "attack"]
    assert len(attacks) == 3 * 3 * 2  # (2 white-box + 1 transfer) x 3 methods x 2 modes
    for e in attacks:
        for q in ("score", "exposure"):
            change, beyond = e["tests"][q]["change"], e["tests"][q]["beyond_placebo"]
            assert change["unit"] == ("items" if e["mode"] == "deployment" else "replicates")
            for t in (change, beyond):
                assert "p_adjusted" in t and "significant" in t  # in the run's Benjamini-Hochberg family
    assert results["tests"]["n_tests"] >= len(attacks) * 4
    findings = [f for f in results["findings"] if f["id"] == "p"]
    assert {(f["extractor"], f["mode"], f["transfer"]) for f in findings} == {
        (x, m, t) for x in ("standard", "pgd_at") for m in ("retrain", "deployment") for t in (False, True)
        if not (x == "standard" and t)}
    for f in findings:
        assert f["answer"] in ("yes", "partly", "no", "n/a") and "beyond" in f["statement"]
    tables = record.dir / "report" / "tables"
    with (tables / "promotion_items.csv").open() as fh:
        items = list(csv.DictReader(fh))
    assert len(items) == len(attacks) * 4
    assert {"prediction shift", "placebo prediction shift", "share of users whose score rose", "HR@10 before",
            "top-10 share after", "median rank after"} <= set(items[0])
    summary = (record.dir / "report" / "summary.txt").read_text()
    assert "== item promotion: 4 items" in summary and "(p)" in summary


def test_the_page_answers_p_per_extractor_and_mode_in_the_colour_of_its_meaning(run):
    """(p) on the page: one badge per finding in a grid of extractor x (white-box, transfer) by mode, coloured by
    what the answer means for the shop (a seller who can raise exposure is bad news), numbers folded below."""
    _, record, results = run
    html = (record.dir / "report" / "report.html").read_text()
    section = re.search(r'<section id="finding-p">(.*?)</section>', html, re.S).group(1)
    grid = re.search(r'<table class="grid">(.*?)</table>', section, re.S).group(1)
    badges = re.findall(r'<td[^>]*><span class="ans (\w+)">([^<]+)</span></td>', grid)
    findings = [f for f in results["findings"] if f["id"] == "p"]
    meaning = {"yes": "bad", "partly": "mixed", "no": "good", "n/a": "untested"}
    assert sorted(badges) == sorted((meaning[f["answer"]], f["answer"]) for f in findings)
    assert ">transfer from standard<" in grid and section.index("<details>") > section.index('<table class="grid">')


def test_promotion_specs_that_cannot_run_are_refused_before_any_work():
    bad = {**SPEC, "promotion": {"attacks": [{"method": "pgd", "eps": [8]}]}}
    with pytest.raises(InvalidInput, match="unknown promotion attack 'pgd'"):
        parse_spec(bad)
    bad = {**SPEC, "promotion": {"attacks": [{"method": "insa", "eps": [8]}], "transfer_from": "madry"}}
    with pytest.raises(InvalidInput, match="transfer_from 'madry' is not an extractor"):
        parse_spec(bad)
    bad = {**SPEC, "attacks": [{"method": "insa", "eps": [8]}]}
    with pytest.raises(InvalidInput, match="list it under promotion.attacks"):
        parse_spec(bad)
    bad = {**SPEC, "promotion": {"attacks": [{"method": "insa", "eps": [0.03]}]}}
    with pytest.raises(InvalidInput, match="did you mean 7.65"):
        parse_spec(bad)
