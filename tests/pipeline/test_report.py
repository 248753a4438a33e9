"""The report builder on a tiny hand-made store whose artifacts follow the formats of ``steps.py``.

Scenario: 12 items (0-3 'sandal' = origin, 4-7 'sneaker' = target, 8-11 'boot'), 6 users, two
extractors (standard, pgd_at), PGD eps 4 and 8, VBPR and AMR, both modes, K in {5, 10}.
Numbers are chosen so the answers differ: PGD eps 8 raises CHR significantly under standard,
eps 4 does not; pgd_at cuts SR and keeps only AMR's rise significant.
"""

from __future__ import annotations

import base64
import csv
import json
import re

import numpy as np
import pytest
from markupsafe import escape

from advrec.pipeline.context import StepContext
from advrec.pipeline.dag import Step, eps_label
from advrec.pipeline.steps import step_report
from advrec.report import format_summary
from advrec_common.errors import InvalidInput, NotFound
from advrec_common.store import ArtifactStore, artifact_key

EXTS, RECS, MODES, EPS, KS = ("standard", "pgd_at"), ("vbpr", "amr"), ("retrain", "deployment"), (4.0, 8.0), (5, 10)
CLASSES = ["sandal", "sneaker", "boot"]
ITEM_CLASS = np.repeat(np.arange(3), 4)
N_USERS = 6
SR = {("standard", 4.0): 50.0, ("standard", 8.0): 100.0, ("pgd_at", 4.0): 25.0, ("pgd_at", 8.0): 0.0}
FEAT_MSE = {("standard", 4.0): 0.02, ("standard", 8.0): 0.05, ("pgd_at", 4.0): 0.01, ("pgd_at", 8.0): 0.03}
BEFORE_TOP = np.tile(np.array([4, 5, 6, 7, 8, 9, 10, 11, 0, 1]), (N_USERS, 1))


def chr_cell(ext: str, eps: float, rec: str, mode: str, k: int) -> dict:
    """CHR/nCDCG numbers of one evaluation: before, after and p-values."""
    after, p = 0.12, 0.2  # PGD eps 4 under standard: a small, non-significant rise
    if ext == "standard" and eps == 8.0:
        after, p = 0.30, 0.0004
        if (rec, mode) == ("amr", "deployment"):
            p = 0.05  # the boundary: p <= 0.05 is marked
    elif ext == "pgd_at" and eps == 8.0:
        after, p = (0.19, 0.01) if rec == "amr" else (0.13, 0.3)
    elif ext == "pgd_at":
        after, p = 0.11, 0.5
    before = 0.10 + 0.01 * k
    after = after + 0.01 * k
    return {"k": k,
            "chr": {"before": before, "after": after, "t_pvalue": p, "wilcoxon_pvalue": min(1.0, 2 * p)},
            "chr_count": {"before": before * k, "after": after * k, "t_pvalue": p, "wilcoxon_pvalue": min(1.0, 2 * p)},
            "ncdcg": {"before": 0.2, "after": 0.2 + (after - before), "t_pvalue": 0.6 if p > 0.05 else 0.03,
                      "wilcoxon_pvalue": float("nan") if ext == "pgd_at" else 0.04}}


def after_top(ext: str, eps: float) -> np.ndarray:
    """After lists: under standard eps 8, user 3 gains two sandals in the top 5 and user 1 one."""
    top = BEFORE_TOP.copy()
    if ext == "standard" and eps == 8.0:
        top[3] = [0, 1, 4, 5, 6, 7, 8, 9, 10, 11]
        top[1] = [0, 4, 5, 6, 7, 8, 9, 10, 11, 1]
    return top


def _put(store: ArtifactStore, name: str, files: dict, result: dict | None = None) -> str:
    key = artifact_key("fake", {"step": name})
    with store.writing(key, {"step": name, "result": result or {}}) as d:
        for fname, obj in files.items():
            if fname.endswith(".npy"):
                np.save(d / fname, obj)
            else:
                (d / fname).write_text(json.dumps(obj))
    return key


def _spec() -> dict:
    """The spec as the DAG passes it (``json.loads(spec.model_dump_json())``), written out so this test
    does not import the attack/recommender registries the spec validator checks names against."""
    attack = {"method": "pgd", "eps": list(EPS), "norm": "linf", "steps": 10, "step_size": None,
              "budget_space": "pixel", "delivery": "png8", "jpeg_quality": 90, "params": {}}
    return {
        "spec_version": 1, "name": "tiny", "seed": 0, "shard_size": 256, "gallery_users": 1,
        "dataset": {"kind": "demo", "n_items": 20, "n_users": 10, "image_size": 16, "seed": 0},
        "extractors": [{"name": e, "source": "demo", "defense": e, "backbone": "small_cnn"} for e in EXTS],
        "attacks": [attack], "recommenders": [{"name": r, "config": {}} for r in RECS], "ks": list(KS),
        "modes": list(MODES), "scenario": {"origin": None, "target": None, "select_k": 20, "min_items": 5},
    }


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """(store, dep_keys, spec) of a complete tiny run."""
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    rng = np.random.default_rng(0)
    images = rng.integers(20, 236, size=(12, 8, 8, 3), dtype=np.uint8)
    deps: dict[str, str] = {}
    deps["dataset"] = _put(store, "dataset", {
        "images.npy": images, "train_user.npy": np.arange(N_USERS), "train_item.npy": np.arange(N_USERS) + 2,
        "test_user.npy": np.arange(N_USERS), "test_item.npy": np.arange(N_USERS) + 3,
        "items.json": {"name": "tiny", "item_ids": [f"i{i}" for i in range(12)], "user_ids": [f"u{u}" for u in
                       range(N_USERS)], "n_users": N_USERS, "image_paths": None, "categories": None,
                       "category_names": []},
    }, {"n_items": 12, "n_users": N_USERS, "n_train": N_USERS, "n_test": N_USERS})
    for e, (clean_acc, rob_acc) in zip(EXTS, ((0.95, 0.02), (0.80, 0.55)), strict=True):
        deps[f"extractor/{e}"] = _put(store, f"extractor/{e}", {"extractor.json": {
            "backbone": "small_cnn", "source": "demo", "class_names": CLASSES, "feature_dim": 4,
            "report": {"method": e, "clean_accuracy": clean_acc, "robust_accuracy": rob_acc, "eval_eps": 4.0,
                       "eval_steps": 10, "epochs": 3}}})
        deps[f"features/{e}"] = _put(store, f"features/{e}", {
            "features.npy": rng.normal(size=(12, 4)).astype(np.float32), "classes.npy": ITEM_CLASS,
            "probs.npy": np.full(12, 0.9, np.float32), "class_names.json": CLASSES,
            "categories.npy": ITEM_CLASS, "category_names.json": CLASSES})
        for r in RECS:
            acc = {"hr@5": 0.3, "hr@10": 0.5, "ndcg@5": 0.2, "ndcg@10": 0.25, "auc": 0.8 if e == "standard" else 0.7}
            deps[f"train/{e}/{r}"] = _put(store, f"train/{e}/{r}", {
                "topk.npy": BEFORE_TOP, "train.json": {"fit_seconds": 1.5, "report": {},
                                                       "accuracy": {"means": acc} if r == "vbpr" else acc}})
    deps["scenario"] = _put(store, "scenario", {"scenario.json": {
        "origin": "sandal", "target": "sneaker", "chosen_by": "automatic (clean CHR@K ranking, as the study)",
        "select_k": 20, "ranking": [{"category": "sneaker", "chr": 4.0, "n_items": 4},
                                    {"category": "boot", "chr": 3.0, "n_items": 4},
                                    {"category": "sandal", "chr": 0.5, "n_items": 4}]}})
    attacked = np.arange(4)
    for e in EXTS:
        for eps in EPS:
            cell = f"{e}/pgd/{eps_label(eps)}"
            delta = rng.integers(-int(eps), int(eps) + 1, size=(4, 8, 8, 3))
            delta[:, 0, 0, 0] = int(eps)  # the largest |delta| is exactly eps
            adv = np.clip(images[attacked].astype(int) + delta, 0, 255).astype(np.uint8)
            summary = {"n_attacked": 4, "n_catalog": 12, "attack_seconds": 0.5, "images_per_s": 8.0,
                       "success": SR[e, eps], "flipped": SR[e, eps], "feat_mse": FEAT_MSE[e, eps], "psnr": 40.0 - eps,
                       "ssim": 0.99, "linf": eps / 255, "l2": 0.1 * eps, "feat_cos": 0.01 * eps}
            deps[f"adversarial/{cell}"] = _put(store, f"adversarial/{cell}", {
                "items.npy": attacked, "features.npy": rng.normal(size=(12, 4)).astype(np.float32),
                "adv_images.npy": adv, "adv_classes.npy": np.ones(4, np.int64), "adv_probs.npy": np.ones(4, np.float32),
                "table.json": [], "summary.json": summary})
            for r in RECS:
                for m in MODES:
                    deps[f"evaluate/{cell}/{r}/{m}"] = _put(store, f"evaluate/{cell}/{r}/{m}", {
                        "topk.npy": after_top(e, eps), "metrics.json": {
                            "mode": m, "recommender": r, "origin": "sandal", "target": "sneaker", "n_attacked": 4,
                            "per_k": [chr_cell(e, eps, r, m, k) for k in KS],
                            "accuracy_after": {"hr@5": 0.29, "hr@10": 0.48, "ndcg@5": 0.19, "ndcg@10": 0.24},
                            "rank_shift": {"mean": -2.0, "median": -1.5}}})
    return store, deps, _spec()


def _run(store, deps, spec, out, **params) -> StepContext:
    out.mkdir()
    step = Step("report", "report", {"spec": spec, "gallery_users": 1, **params}, {"steps": list(deps)}, "0" * 64,
                "orchestrate")
    ctx = StepContext(step, store, out, dict(deps))
    step_report(ctx)
    return ctx


@pytest.fixture(scope="module")
def report(fake_run, tmp_path_factory):
    store, deps, spec = fake_run
    out = tmp_path_factory.mktemp("report") / "out"
    _run(store, deps, spec, out)
    return out


def _eval(results, ext, eps, rec, mode):
    return next(e for e in results["evaluations"] if (e["extractor"], e["eps"], e["recommender"], e["mode"])
                == (ext, eps, rec, mode))


def test_results_json_holds_the_artifact_numbers(report):
    text = (report / "results.json").read_text()
    assert "NaN" not in text  # strict JSON: the NaN Wilcoxon p-values became null
    res = json.loads(text)
    assert res["schema_version"] == 1 and res["headline_k"] == 10 and res["scenario"]["origin"] == "sandal"
    assert len(res["evaluations"]) == 2 * 2 * 2 * 2 and len(res["attacks"]) == 4
    for ext in EXTS:
        for eps in EPS:
            for rec in RECS:
                for mode in MODES:
                    got = {r["k"]: r for r in _eval(res, ext, eps, rec, mode)["per_k"]}
                    for k in KS:
                        want = chr_cell(ext, eps, rec, mode, k)
                        assert got[k]["chr"] == want["chr"]
                        assert got[k]["ncdcg"]["after"] == want["ncdcg"]["after"]
            summary = next(a for a in res["attacks"] if (a["extractor"], a["eps"]) == (ext, eps))["summary"]
            assert summary["success"] == SR[ext, eps] and summary["feat_mse"] == FEAT_MSE[ext, eps]
    assert _eval(res, "pgd_at", 8.0, "vbpr", "retrain")["per_k"][0]["ncdcg"]["wilcoxon_pvalue"] is None
    clean = {(c["extractor"], c["recommender"]): c for c in res["clean"]}
    assert clean["standard", "vbpr"]["accuracy"]["auc"] == 0.8  # stored under "means"
    assert clean["pgd_at", "amr"]["accuracy"]["auc"] == 0.7  # stored flat
    assert res["extractors"]["pgd_at"]["report"]["robust_accuracy"] == 0.55
    assert res["extractors"]["standard"]["n_origin_items"] == 4
    assert res["dataset"]["n_items"] == 12
    findings = json.loads((report / "findings.json").read_text())
    assert findings["findings"] == res["findings"] and findings["k"] == 10


def _csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_csv_marks_follow_the_t_test(report):
    for mode in MODES:
        rows = _csv(report / "tables" / f"category_metrics_{mode}.csv")
        assert len(rows) == 2 * (len(RECS) + len(EPS) * len(RECS))
        # the study's order: per defense, its clean rows first, then each attack budget
        assert [r["attack"] + r["eps"] for r in rows[:6]] == ["clean", "clean", "pgd4", "pgd4", "pgd8", "pgd8"]
        assert rows[6]["defense"] == "pgd_at" and rows[6]["attack"] == "clean"
        for r in rows:
            for k in KS:
                after, p = r[f"CHR@{k} after"], r[f"CHR@{k} p (t)"]
                if r["attack"] == "clean":
                    assert after == "" and r[f"CHR@{k} before"] != ""
                    continue
                want = chr_cell(r["defense"], float(r["eps"]), r["recommender"], mode, k)
                assert after.endswith("*") == (want["chr"]["t_pvalue"] <= 0.05)
                assert float(after.rstrip("*")) == pytest.approx(want["chr"]["after"], rel=1e-3)
                assert float(p) == pytest.approx(want["chr"]["t_pvalue"], rel=1e-2)
                assert r[f"nCDCG@{k} after"].endswith("*") == (want["ncdcg"]["t_pvalue"] <= 0.05)
        if mode == "deployment":  # p exactly 0.05 is marked
            edge = next(r for r in rows if (r["defense"], r["eps"], r["recommender"]) == ("standard", "8", "amr"))
            assert edge["CHR@10 p (t)"] == "0.05" and edge["CHR@10 after"].endswith("*")
    attacks = {(r["defense"], r["eps"]): r for r in _csv(report / "tables" / "attacks.csv")}
    assert float(attacks["pgd_at", "8"]["SR %"]) == 0.0 and float(attacks["standard", "8"]["feature MSE"]) == 0.05
    clean = _csv(report / "tables" / "clean_accuracy.csv")
    assert {r["auc"] for r in clean} == {"0.8", "0.7"} and list(clean[0])[:2] == ["defense", "recommender"]
    assert [r["category"] for r in _csv(report / "tables" / "scenario.csv")] == ["sneaker", "boot", "sandal"]


def _finding(res, fid, ext, eps):
    return next(f for f in res["findings"] if (f["id"], f["extractor"], f["eps"]) == (fid, ext, eps))


def test_findings_follow_the_numbers_and_say_no(report):
    res = json.loads((report / "results.json").read_text())
    a8, a4 = _finding(res, "a", "standard", 8.0), _finding(res, "a", "standard", 4.0)
    assert a8["answer"] == "yes" and a8["n_rose"] == 4 and "0.2 -> 0.4" in a8["statement"]
    assert a4["answer"] == "no" and a4["n_rose"] == 0 and a4["statement"].startswith("No:")
    assert _finding(res, "a", "pgd_at", 8.0)["n_rose"] == 2  # AMR only
    b8, b4 = _finding(res, "b", "pgd_at", 8.0), _finding(res, "b", "pgd_at", 4.0)
    assert b8["answer"] == "yes" and b8["p_fisher"] == pytest.approx(1 / 35, rel=1e-6)  # 4/4 vs 0/4 successes
    assert b4["answer"] == "no" and "not significantly" in b4["statement"]
    c8, c4 = _finding(res, "c", "pgd_at", 8.0), _finding(res, "c", "pgd_at", 4.0)
    assert c8["answer"] == "partly" and (c8["n_rose"], c8["n_rose_baseline"]) == (2, 4)
    assert "SR fell from 100% to 0%" in c8["statement"]
    assert c4["answer"] == "n/a" and c4["statement"].startswith("Nothing to prevent")


def test_html_is_self_contained_with_images_and_findings(report):
    files = sorted(p.name for p in report.iterdir())
    assert files == ["findings.json", "report.html", "results.json", "summary.txt", "tables"]
    html = (report / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    # 2 CHR plots + SR + feature MSE + 10 gallery tiles + the perturbation figure
    assert len(srcs) == 4 + 10 + 1
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((report / "results.json").read_text())
    for f in res["findings"]:
        assert str(escape(f["statement"])) in html
    assert "p=0.0004" in html and "SR fell from 100% to 0%" in html


def test_gallery_picks_the_biggest_gainer_of_the_first_significant_cell(report):
    g = json.loads((report / "results.json").read_text())["gallery"]
    assert (g["extractor"], g["eps"], g["recommender"], g["mode"], g["significant"]) == (
        "standard", 8.0, "vbpr", "retrain", True)
    (user,) = g["users"]
    assert (user["user"], user["gain"]) == ("u3", 2)
    assert [t["item"] for t in user["after"]] == ["i0", "i1", "i4", "i5", "i6"]
    assert [t["origin"] for t in user["after"]] == [True, True, False, False, False]
    assert [t["adversarial_image"] for t in user["after"]][:2] == [True, True]
    assert not any(t["adversarial_image"] for t in user["before"])
    assert [e["item"] for e in g["examples"]] == ["i0", "i1", "i2"]
    assert all(e["linf_255"] == pytest.approx(8.0) and e["magnification"] == pytest.approx(255 / 8) for e in g["examples"])


def test_summary_text_and_format_summary_agree(report):
    res = json.loads((report / "results.json").read_text())
    text = format_summary(res)
    assert (report / "summary.txt").read_text().strip() == text.strip()
    assert "== retrain ==" in text and "== deployment ==" in text and "CHR@10 before -> after" in text
    assert "0.2 -> 0.4*" in text and "0.2 -> 0.22" in text and "0.2 -> 0.22*" not in text  # eps 8 marked, 4 not
    assert text.count("(a) ") == 4 and "(c) " in text


def test_bad_input_raises_typed_errors_and_writes_nothing(fake_run, tmp_path):
    store, deps, spec = fake_run
    with pytest.raises(InvalidInput, match="spec"):
        _run(store, deps, {"name": "x"}, tmp_path / "a")
    assert not any((tmp_path / "a").iterdir())
    partial = {k: v for k, v in deps.items() if k != "evaluate/pgd_at/pgd/eps8/amr/deployment"}
    with pytest.raises(NotFound, match="evaluate/pgd_at/pgd/eps8/amr/deployment"):
        _run(store, partial, spec, tmp_path / "b")
    assert not any((tmp_path / "b").iterdir())


def test_no_dataset_dependency_gives_a_report_without_gallery(fake_run, tmp_path):
    store, deps, spec = fake_run
    _run(store, {k: v for k, v in deps.items() if k != "dataset"}, spec, tmp_path / "o", gallery_users=0)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["gallery"] is None and res["dataset"] is None
    assert "No gallery" in (tmp_path / "o" / "report.html").read_text()
