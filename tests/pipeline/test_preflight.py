"""Preflight: every problem a spec has, found before compute, with its spec path; torch never imported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from advrec.pipeline.preflight import preflight


def _catalog(tmp_path, n=10):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(n):
        Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(images / f"p{i}.png")
    lines = ["user_id;product_id;ts"] + [f"u{u};p{(u + j) % n};{1700000000 + j}" for u in range(8) for j in range(3)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "cats.csv").write_text("item,category\n" + "".join(f"p{i},{'shoe' if i % 2 else 'bag'}\n"
                                                                   for i in range(n)))
    return {"kind": "generic", "images_dir": str(images), "interactions": str(tmp_path / "log.csv"),
            "categories": str(tmp_path / "cats.csv"),
            "columns": {"user": "user_id", "item": "product_id", "timestamp": "ts"}}


def _spec(dataset, **over):
    return {"dataset": dataset, "extractors": [{"name": "standard", "image_size": 32}],
            "attacks": [{"method": "fgsm", "eps": [4]}], "recommenders": [{"name": "vbpr"}], "ks": [2, 5], **over}


def test_a_good_catalog_passes_and_reports_its_size(tmp_path):
    out = preflight(_spec(_catalog(tmp_path, n=10)), device="cpu")  # 5 items per label: scenario.min_items
    assert out.ok, out.problems
    assert out.facts["n_items"] == 10 and out.facts["categories"] == ["bag", "shoe"]


def test_every_problem_at_once_with_spec_paths(tmp_path):
    doc = _spec(_catalog(tmp_path), ks=[2, 50], scenario={"origin": "sock", "target": "shoe"},
                recommenders=[{"name": "vbpr", "config": {"epochz": 3}}])
    out = preflight(doc, device="cpu")
    # a field problem does not hide the checks against the catalog: one answer lists all three
    assert not out.ok and out.spec is None
    assert [loc for loc, _ in out.problems] == ["recommenders[0].config.epochz", "ks[1]", "scenario.origin"]
    doc["recommenders"] = [{"name": "vbpr"}]
    locs = [loc for loc, _ in preflight(doc, device="cpu").problems]
    assert locs == ["ks[1]", "scenario.origin"]


def test_a_broken_extractor_keeps_its_index_and_the_others_are_checked(tmp_path):
    """Extractor 0 does not parse; extractor 1 (trained here) is still checked against the catalog, under
    its own index, and the catalog checks run."""
    dataset = _catalog(tmp_path)
    dataset.pop("categories")
    doc = _spec(dataset, ks=[50], extractors=[{"name": "a", "source": "named", "lr": 1},
                                               {"name": "b", "source": "train", "backbone": "small_cnn",
                                                "defense": "standard"}])
    locs = [loc for loc, _ in preflight(doc, device="cpu").problems]
    assert locs == ["extractors[0].lr", "ks[0]", "extractors[1].source"]
    doc["extractors"] = "standard"  # not a list: no extractor checks, the catalog's still run
    locs = [loc for loc, _ in preflight(doc, device="cpu").problems]
    assert locs[-1] == "ks[0]" and all(loc.startswith("extractors") for loc in locs[:-1])


def test_an_invalid_dataset_section_stops_only_the_catalog_checks(tmp_path):
    doc = _spec({**_catalog(tmp_path), "kcore": -1}, ks=[50], recommenders=[{"name": "vbpr", "config": {"x": 1}}])
    locs = [loc for loc, _ in preflight(doc, device="cpu").problems]
    assert locs == ["dataset.kcore", "recommenders[0].config.x"]  # K is not judged against an unread catalog


def test_attack_params_the_method_ignores_are_problems(tmp_path):
    doc = _spec(_catalog(tmp_path), attacks=[{"method": "pgd", "eps": [4], "params": {"cw_steps": 3}},
                                             {"method": "cw", "eps": [0], "norm": "l2", "params": {"cw_steps": 3}}])
    problems = preflight(doc, device="cpu").problems
    assert [loc for loc, _ in problems] == ["attacks[0]"]
    assert "pgd does not use params cw_steps" in problems[0][1]


def test_recommender_config_another_model_reads_is_a_problem(tmp_path):
    doc = _spec(_catalog(tmp_path), recommenders=[{"name": "vbpr", "config": {"adv_eps": 0.5, "full_vbpr": True}},
                                                  {"name": "amr", "config": {"adv_eps": 0.5, "full_vbpr": True}},
                                                  {"name": "acf", "config": {"hidden": 8, "adv_lambda": 0.1}}])
    problems = preflight(doc, device="cpu").problems
    # vbpr reads full_vbpr but not adv_eps; amr reads both; acf reads hidden, and adv_lambda 0.1 is the default
    assert problems == [("recommenders[0]", "vbpr does not use config adv_eps (read only by adv_eps: amr)")]


def test_lr_and_regs_lengths_are_checked_against_the_model_blocks_before_compute(tmp_path):
    """lr/regs take one value for all blocks or one per block (a number means one for all); other
    lengths are problems named per recommender, found before anything trains."""
    doc = _spec(_catalog(tmp_path), recommenders=[
        {"name": "vbpr", "config": {"lr": [0.1, 0.2], "regs": [1, 2, 3, 4]}},
        {"name": "bprmf", "config": {"lr": 0.05, "regs": [0.1, 0.2]}},
        {"name": "acf", "config": {"lr": [0.1, 0.2]}},
        {"name": "dvbpr", "config": {"regs": [0.1, 0.2], "lr": [1e-4]}},
    ])
    problems = preflight(doc, device="cpu").problems
    assert [loc for loc, _ in problems] == ["recommenders[0]", "recommenders[2]"]
    assert problems[0][1] == (
        "config.lr: vbpr takes one value for all its parameters or one per block: 3 (users, items, visual "
        "projection E); got 2 values; config.regs: vbpr takes one value for all its parameters or one per block: "
        "3 (users, items, visual projection E); got 4 values")
    assert problems[1][1] == "config.lr: acf takes one value for all its parameters; got 2 values"


def test_missing_files_and_devices_are_problems_not_tracebacks(tmp_path):
    bad = {"kind": "generic", "images_dir": str(tmp_path / "nope"), "interactions": str(tmp_path / "none.csv")}
    out = preflight(_spec(bad), device="cuda:3" if not _has_gpu() else "tpu")
    locs = {loc for loc, _ in out.problems}
    assert "--device" in locs and {"dataset.interactions", "dataset.images_dir"} & locs


def _has_gpu() -> bool:
    import os

    return os.path.exists("/proc/driver/nvidia/version")


def test_preflight_never_imports_torch(tmp_path):
    code = ("import sys; from advrec.pipeline.preflight import preflight; "
            "r = preflight({'preset': 'demo'}, device='cpu'); assert r.ok, r.problems; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scenario_names_are_checked_against_the_classes_the_study_will_use(tmp_path):
    """Catalog labels when every item has one; else the extractors' classes when known without torch
    (named weights: ImageNet-1k; demo extractors: the demo's types)."""
    ds = _catalog(tmp_path)
    named = [{"name": "lite0", "source": "named", "weight_name": "efficientnet_lite0:imagenet"}]
    ok = preflight(_spec(ds, extractors=named, scenario={"origin": "shoe", "target": "bag"}), device="cpu")
    assert ok.ok, ok.problems  # the shop's labels, whatever the extractor's classes
    doc = _spec(ds, extractors=named, scenario={"category_source": "extractor", "origin": "shoe", "target": "sandal"})
    problems = dict(preflight(doc, device="cpu").problems)
    assert list(problems) == ["scenario.origin"] and "classes of extractor 'lite0'" in problems["scenario.origin"]
    demo = _spec(ds, extractors=[{"name": "standard"}], scenario={"category_source": "extractor", "target": "shoe"})
    assert "'sock'" in dict(preflight(demo, device="cpu").problems)["scenario.target"]
    same = preflight(_spec(ds, scenario={"origin": "bag", "target": "bag"}), device="cpu")
    assert [loc for loc, _ in same.problems] == ["scenario.target"]


def test_a_wrong_column_is_the_one_cause_reported(tmp_path):
    """A misnamed interactions column leaves the catalog unread: its labels are unknown, not absent. The
    scenario check claimed "the catalog has no labels" and listed 1,000 ImageNet classes under it."""
    named = [{"name": "lite0", "source": "named", "weight_name": "efficientnet_lite0:imagenet"}]
    dataset = {**_catalog(tmp_path), "columns": {"user": "customer", "item": "product_id", "timestamp": "ts"}}
    out = preflight(_spec(dataset, extractors=named, scenario={"origin": "shoe", "target": "bag"}), device="cpu")
    assert [loc for loc, _ in out.problems] == ["dataset.interactions"], out.problems
    assert "no 'customer' column for the user" in out.problems[0][1]
    assert "tench" not in str(out.problems) and "has no labels" not in str(out.problems)
    # the study's protocol does not read the catalog's labels: its names are still checked
    protocol = _spec(dataset, extractors=named, scenario={"category_source": "extractor", "origin": "shoe"})
    assert [loc for loc, _ in preflight(protocol, device="cpu").problems] == ["dataset.interactions",
                                                                             "scenario.origin"]


def test_min_items_is_checked_against_the_labels_before_compute(tmp_path):
    """The labels are known before compute, so a scenario the scenario step would refuse after training every
    model is refused at --validate: min_items above every category's size, an origin with no kept item."""
    dataset = _catalog(tmp_path, n=6)  # 3 'bag', 3 'shoe'
    assert preflight(_spec(dataset, scenario={"min_items": 3}), device="cpu").ok
    out = preflight(_spec(dataset, scenario={"min_items": 4}), device="cpu")
    assert out.problems == [("scenario.min_items", "no category has 4 items to push (items per category, from the "
                                                   "catalog's labels: bag 3, shoe 3); lower scenario.min_items or "
                                                   "name scenario.origin")]
    target = preflight(_spec(dataset, scenario={"min_items": 3, "target": "bag", "category_source": "catalog"}),
                       device="cpu")
    assert target.ok  # 'shoe' has 3
    named = preflight(_spec(dataset, scenario={"min_items": 50, "origin": "shoe"}), device="cpu")
    assert named.ok  # min_items only constrains an origin chosen by the run
    with open(dataset["categories"], "a") as fh:
        fh.write("p99,hat\n")  # a label of an item with no image: not in the catalog
    hat = preflight(_spec(dataset, scenario={"origin": "hat"}), device="cpu")
    assert [loc for loc, _ in hat.problems] == ["scenario.origin"] and "'hat' has no item in the catalog" in \
        hat.problems[0][1]
    # the extractors' classes are not known before compute: nothing to count
    assert preflight(_spec(dataset, scenario={"min_items": 4, "category_source": "extractor"}), device="cpu").ok


def test_a_category_name_off_by_an_accent_or_case_gets_a_did_you_mean(tmp_path):
    """A Spanish shop's labels ('Calzado Niño') typed without the accent or in another case: the message
    named the name as unknown and listed every category; it now says which one was meant."""
    dataset = _catalog(tmp_path)
    (tmp_path / "cats.csv").write_text("item,category\n" + "".join(
        f"p{i},{'Calzado Niño' if i % 2 else 'Camisetas'}\n" for i in range(10)), encoding="utf-8")
    out = preflight(_spec(dataset, scenario={"origin": "calzado nino", "target": "Camisettas"}), device="cpu")
    problems = dict(out.problems)
    assert problems["scenario.origin"].startswith("'calzado nino' is not a category (did you mean 'Calzado Niño'?): "
                                                  "categories come from the catalog's labels")
    assert "(did you mean 'Camisetas'?)" in problems["scenario.target"]
    far = dict(preflight(_spec(dataset, scenario={"origin": "Zapatos"}), device="cpu").problems)
    assert "did you mean" not in far["scenario.origin"]


def test_eps_written_as_a_fraction_of_255_says_how_to_write_it(tmp_path):
    """`eps: [8/255]` in YAML is the text '8/255': the answer was pydantic's "unable to parse string as a
    number"; it says that budgets are in /255 units already."""
    import yaml

    doc = yaml.safe_load("extractors: [{name: standard}]\nrecommenders: [{name: vbpr}]\n"
                         "attacks: [{method: pgd, eps: [8/255, 4]}]\n")
    out = preflight(doc, device="cpu")
    assert out.problems == [("attacks[0].eps[0]", "'8/255' is text, not a number: budgets are already in /255 "
                                                  "units, so 8/255 is written 8")]


def test_an_images_folder_of_subfolders_says_so(tmp_path):
    """A product-photo export sorted into one folder per category: the message ended in "images like "
    with nothing after it; it names the folder's subfolders and the fix, and only that."""
    dataset = _catalog(tmp_path)
    images = Path(dataset["images_dir"])
    for i, photo in enumerate(sorted(images.iterdir())):
        (images / ("shoe" if i % 2 else "bag")).mkdir(exist_ok=True)
        photo.rename(images / ("shoe" if i % 2 else "bag") / photo.name)
    out = preflight(_spec(dataset), device="cpu")
    assert out.problems == [("dataset.images_dir", f"{images}: no image <item id>.<jpg|jpeg|png|webp> in this "
                                                   "folder; it holds 2 folder(s) ('bag', 'shoe'), and images in "
                                                   "subfolders are not read: point images_dir at the folder that "
                                                   "holds the images")], out.problems
    for photo in images.rglob("*.png"):
        photo.unlink()
    (images / "readme.txt").write_text("photos")
    out = preflight(_spec({**dataset, "images_dir": str(images / "bag")}), device="cpu")
    assert dict(out.problems)["dataset.images_dir"].endswith("the folder is empty; it should hold one image "
                                                             "<item id>.<jpg|jpeg|png|webp> per item")


def test_labels_weights_and_ignored_fields(tmp_path):
    ds = _catalog(tmp_path)
    (tmp_path / "cats.csv").write_text("item,category\np0,shoe\np1,bag\n")  # p2..p9 unlabelled
    doc = _spec(ds, scenario={"category_source": "catalog"}, extractors=[
        {"name": "trained", "source": "train", "backbone": "small_cnn", "defense": "pgd_at", "image_size": 32},
        {"name": "madry", "source": "named", "weight_name": "resnet50:madry_linf_4", "epochs": 3},
        {"name": "ft", "source": "train", "backbone": "resnet50", "defense": "standard",
         "init_weights": "resnet50:free_at_eps4"}])
    out = preflight(doc, device="cpu", weights_dir=tmp_path / "weights")
    problems = dict(out.problems)
    assert "8 of 10 items have no category label" in problems["scenario.category_source"]
    assert "'train' learns the catalog's categories" in problems["extractors[0].source"]
    assert str(tmp_path / "weights" / "imagenet_linf_4.pt") in problems["extractors[1].weight_name"]
    assert "free_at/model_best.pth.tar" in problems["extractors[2].init_weights"]
    assert dict(out.warnings)["extractors[1].epochs"].startswith("ignored: source 'named'")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "imagenet_linf_4.pt").write_bytes(b"x")
    assert "extractors[1].weight_name" not in dict(preflight(doc, device="cpu", weights_dir=tmp_path / "weights").problems)


def test_unknown_named_weights_fail_at_parse(tmp_path):
    out = preflight(_spec(_catalog(tmp_path), extractors=[{"name": "x", "source": "named", "weight_name": "nope"}]))
    assert not out.ok and "unknown weight_name 'nope'" in out.problems[0][1]


def test_validate_answers_in_under_3_s_without_torch(tmp_path):
    """The brief's budget for ``advrec run SPEC --validate`` on a small catalog, in a fresh process."""
    import json
    import resource
    import time

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec(_catalog(tmp_path), extractors=[
        {"name": "lite0", "source": "named", "weight_name": "efficientnet_lite0:imagenet"}])))
    code = ("import sys; from advrec.cli import main; rc = main(['run', sys.argv[1], '--validate']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr
    # the process's own CPU time (imports included): wall time on a shared CI box also counts the
    # other jobs (0.6 s of CPU took 2.4 s of wall time at load 8 on 2 cores); both are printed
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"advrec run --validate: {cpu:.2f} s CPU, {wall:.2f} s wall")
    assert "is valid" in done.stdout and cpu < 3.0, (cpu, wall)


def test_unknown_backbones_are_problems(tmp_path):
    doc = _spec(_catalog(tmp_path), extractors=[
        {"name": "a", "source": "train", "backbone": "resnet5", "defense": "pgd_at", "image_size": 32},
        {"name": "b", "source": "checkpoint", "backbone": "timm:convnext_tiny", "checkpoint": str(tmp_path / "cats.csv")}])
    problems = dict(preflight(doc, device="cpu").problems)
    assert list(problems) == ["extractors[0].backbone"] and "unknown backbone 'resnet5'" in problems["extractors[0].backbone"]


def test_a_study_layout_catalog_is_counted_for_k(tmp_path):
    """The study layout's items are its numbered images: K above their number is an error before compute
    (it was only checked for generic catalogs)."""
    (tmp_path / "original" / "images").mkdir(parents=True)
    for i in range(7):
        Image.new("RGB", (8, 8)).save(tmp_path / "original" / "images" / f"{i}.jpg")
    (tmp_path / "trainingset.tsv").write_text("0\t1\n")
    (tmp_path / "testset.tsv").write_text("0\t2\n")
    out = preflight(_spec({"kind": "study", "root": str(tmp_path)}, ks=[5, 10]), device="cpu")
    assert out.facts["n_items"] == 7
    assert ("ks[1]", "K = 10 is larger than the catalog (7 items)") in out.problems


def test_a_catalog_without_labels_is_warned_about_extractor_classes(tmp_path):
    dataset = _catalog(tmp_path)
    dataset.pop("categories")
    out = preflight(_spec(dataset), device="cpu")
    warned = dict(out.warnings)
    assert out.ok and "1,000 ImageNet classes" in warned["dataset.categories"]
    (tmp_path / "labelled").mkdir()
    labelled = preflight(_spec(_catalog(tmp_path / "labelled")), device="cpu")
    assert "dataset.categories" not in dict(labelled.warnings)


@pytest.mark.parametrize(("content", "says"), [
    (b"a: [1, 2\n", "bad.yaml:2:1: not valid YAML/JSON: expected ',' or ']'"),
    (b"", "the file is empty"),
    (b"\x00\x01\xff", "not UTF-8 text (byte 2)"),
    (b"- 1\n- 2\n", "a spec must be a mapping (field: value lines), not a list"),
    (b"x" * 1_000_001, "a spec is at most 1,000,000"),
])
def test_a_spec_file_that_is_not_a_spec_is_one_clear_error(tmp_path, monkeypatch, content, says):
    from advrec.pipeline.spec import read_spec_document
    from advrec_common.errors import InvalidInput

    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_bytes(content)
    with pytest.raises(InvalidInput, match=re.escape(says)):
        read_spec_document("bad.yaml")
