"""The report on a tiny hand-made store whose artifacts follow the domains' formats, with known verdicts.

Scenario: 12 items (0-3 'sandal' = origin, 4-7 'sneaker' = target, 8-11 'boot'), 6 users, two
extractors (standard, pgd_at), PGD eps 4 and 8, VBPR and AMR, both modes, K in {5, 10}, 3 replicates,
placebo and oracle controls. Per-replicate numbers are chosen so the answers are known: PGD eps 8
raises CHR under standard in every cell; eps 4 moves it by noise; pgd_at keeps only AMR's rise;
placebos move nothing; the oracle raises it everywhere.
"""

from __future__ import annotations

import base64
import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape
from scipy import stats

from advrec.pipeline.context import StepContext
from advrec.pipeline.dag import Step, cell_name
from advrec.pipeline.steps import step_report
from advrec.report import format_summary
from advrec.report.findings import finding_d
from advrec.report.stats import PERMUTATIONS, benjamini_hochberg, mcnemar_exact, spearman
from advrec_common.errors import InvalidInput, NotFound
from advrec_common.store import ArtifactStore, artifact_key
from services.recommender.metrics.effects import replicate_effect

EXTS, RECS, MODES, EPS, KS, R = ("standard", "pgd_at"), ("vbpr", "amr"), ("retrain", "deployment"), (4.0, 8.0), (5, 10), 3
CLASSES = ["sandal", "sneaker", "boot"]
ITEM_CLASS = np.repeat(np.arange(3), 4)
N_USERS = 6
BEFORE_TOP = np.tile(np.array([4, 5, 6, 7, 8, 9, 10, 11, 0, 1]), (N_USERS, 1))
NOISE = np.array([0.001, -0.002, 0.0005])


def diffs(control: str, ext: str, eps: float, rec: str) -> np.ndarray:
    """The per-replicate CHR effect of each evaluation (the truth the findings must recover)."""
    if control == "oracle":
        return np.array([0.30, 0.31, 0.29])
    if control == "placebo":
        return NOISE
    if ext == "standard" and eps == 8.0:
        return np.array([0.100, 0.101, 0.099])
    if ext == "pgd_at" and eps == 8.0 and rec == "amr":
        return np.array([0.050, 0.051, 0.049])
    return np.array([0.02, -0.01, 0.015]) if eps == 8.0 else np.array([-0.01, 0.005, 0.0])


def metric(before: np.ndarray, d: np.ndarray, user_p: float) -> dict:
    after = before + d
    return {**replicate_effect(before, after), "before_per_replicate": before.tolist(),
            "after_per_replicate": after.tolist(), "user_t_pvalue": user_p, "user_wilcoxon_pvalue": user_p,
            "user_ci_low": None, "user_ci_high": None, "n_users": N_USERS}


def per_k(control: str, ext: str, eps: float, rec: str) -> list[dict]:
    rows = []
    for k in KS:
        before = 0.10 + 0.01 * k + np.array([0.0, 0.003, -0.002])
        d = diffs(control, ext, eps, rec)
        user_p = 0.001 if d.mean() > 0.04 else 0.3
        rows.append({"k": k, "chr": metric(before, d, user_p), "chr_count": metric(before * k, d * k, user_p),
                     "ncdcg": metric(before + 0.1, d, user_p)})
    return rows


def _put(store: ArtifactStore, name: str, kind: str, files: dict, result: dict | None = None) -> str:
    key = artifact_key("fake", {"step": name})
    with store.writing(key, {"step": name, "kind": kind, "result": result or {}}) as d:
        for fname, obj in files.items():
            if fname.endswith(".npy"):
                np.save(d / fname, obj)
            else:
                (d / fname).write_text(json.dumps(obj))
    return key


def _spec() -> dict:
    attack = {"method": "pgd", "eps": list(EPS), "norm": "linf", "steps": 10, "step_size": None,
              "budget_space": "pixel", "delivery": "png8", "jpeg_quality": 90, "params": {}}
    return {
        "spec_version": 1, "name": "tiny", "seed": 0, "replicates": R, "controls": ["placebo", "oracle"],
        "shard_size": 256, "gallery_users": 1,
        "dataset": {"kind": "demo", "n_items": 20, "n_users": 10, "image_size": 16, "seed": 0},
        "extractors": [{"name": e, "source": "demo", "defense": e, "backbone": "small_cnn"} for e in EXTS],
        "attacks": [attack], "recommenders": [{"name": r, "config": {}} for r in RECS], "ks": list(KS),
        "modes": list(MODES), "scenario": {"origin": None, "target": None, "select_k": 20, "min_items": 5},
    }


def _table(ext: str, eps: float) -> list[dict]:
    """Per-image rows: under standard eps 8 every origin image fools the model, under pgd_at none."""
    success = ext == "standard" and eps == 8.0
    return [{"item": f"i{i}", "clean_is_target": False, "success": success, "float_success": success,
             "changed": True, "flipped": success} for i in range(4)]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """(store, step name -> key, spec) of a complete tiny run."""
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    rng = np.random.default_rng(0)
    images = rng.integers(20, 236, size=(12, 8, 8, 3), dtype=np.uint8)
    keys: dict[str, str] = {}
    keys["dataset"] = _put(store, "dataset", "dataset", {
        "images.npy": images, "train_user.npy": np.arange(N_USERS), "train_item.npy": np.arange(N_USERS) + 2,
        "test_user.npy": np.arange(N_USERS), "test_item.npy": np.arange(N_USERS) + 3,
        "items.json": {"name": "tiny", "item_ids": [f"i{i}" for i in range(12)], "user_ids": [f"u{u}" for u in
                       range(N_USERS)], "n_users": N_USERS, "image_paths": None, "categories": None,
                       "category_names": []},
    }, {"n_items": 12, "n_users": N_USERS, "n_train": N_USERS, "n_test": N_USERS})
    attacked = np.arange(4)
    for e, (clean_acc, rob_acc) in zip(EXTS, ((0.95, 0.02), (0.85, 0.55)), strict=True):
        keys[f"extractor/{e}"] = _put(store, f"extractor/{e}", "extractor", {"extractor.json": {
            "backbone": "small_cnn", "source": "demo", "class_names": CLASSES, "feature_dim": 4,
            "report": {"method": e, "clean_accuracy": clean_acc, "robust_accuracy": rob_acc, "eval_eps": 4.0,
                       "eval_steps": 10, "epochs": 3}}})
        keys[f"features/{e}"] = _put(store, f"features/{e}", "features", {
            "features.npy": rng.normal(size=(12, 4)).astype(np.float32), "classes.npy": ITEM_CLASS,
            "probs.npy": np.full(12, 0.9, np.float32), "class_names.json": CLASSES,
            "categories.npy": ITEM_CLASS, "category_names.json": CLASSES}, {"category_source": "extractor"})
        for r in RECS:
            acc = {"hr@5": 0.3, "hr@10": 0.5, "ndcg@5": 0.2, "ndcg@10": 0.25, "auc": 0.8 if e == "standard" else 0.7}
            keys[f"train/{e}/{r}"] = _put(store, f"train/{e}/{r}", "train", {
                "topk.npy": np.stack([BEFORE_TOP] * R), "train.json": {"fit_seconds": 1.5, "seeds": [0, 1, 2],
                                                                        "accuracy": acc}})
        keys[f"oracle/{e}"] = _put(store, f"oracle/{e}", "oracle", {
            "items.npy": attacked, "features.npy": np.zeros((1, 4, 4), np.float32),
            "summary.json": {"n": 4, "n_target_items": 4, "feat_mse": 0.5}})
    keys["scenario"] = _put(store, "scenario", "scenario", {"scenario.json": {
        "origin": "sandal", "target": "sneaker", "chosen_by": "automatic (clean CHR@K ranking, as the study)",
        "select_k": 20, "ranking": [{"id": 1, "name": "sneaker", "chr": 4.0, "n_items": 4},
                                    {"id": 2, "name": "boot", "chr": 3.0, "n_items": 4},
                                    {"id": 0, "name": "sandal", "chr": 0.5, "n_items": 4}]}})
    for e in EXTS:
        for eps in EPS:
            cell = cell_name(e, "pgd", eps)
            delta = rng.integers(-int(eps), int(eps) + 1, size=(4, 8, 8, 3))
            delta[:, 0, 0, 0] = int(eps)  # the largest |delta| is exactly eps
            adv = np.clip(images[attacked].astype(int) + delta, 0, 255).astype(np.uint8)
            sr = 100.0 if (e == "standard" and eps == 8.0) else 0.0
            summary = {"n_attacked": 4, "n_eligible": 4, "n_catalog": 12, "attack_seconds": 0.5, "success": sr,
                       "float_success": sr, "clean_target_rate": 0.0, "flipped": sr, "n_changed": 4,
                       "all_zero": False, "feat_mse": {4.0: 0.02, 8.0: 0.05}[eps] / (2 if e == "pgd_at" else 1),
                       "psnr": 40.0 - eps, "ssim": 0.99, "linf_255": eps, "l2_255": 10 * eps}
            keys[f"adversarial/{cell}"] = _put(store, f"adversarial/{cell}", "adversarial", {
                "items.npy": attacked, "features.npy": rng.normal(size=(12, 4)).astype(np.float32),
                "adv_images.npy": adv, "adv_classes.npy": np.ones(4, np.int64), "adv_probs.npy": np.ones(4, np.float32),
                "table.json": _table(e, eps), "summary.json": summary})
            keys[f"placebo/{cell}"] = _put(store, f"placebo/{cell}", "placebo", {
                "items.npy": attacked, "features.npy": np.zeros((R, 4, 4), np.float32),
                "images.npy": np.stack([adv] * R), "summary.json": {"n": 4, "draws": R, "linf_255": eps,
                                                                    "l2_255": 10 * eps, "feat_mse": 0.01}})
    for e in EXTS:
        for r in RECS:
            for m in MODES:
                for control, prefix, eps_list in (("oracle", f"evaluate/{e}/oracle", [0.0]),):
                    keys[f"{prefix}/{r}/{m}"] = _put(store, f"{prefix}/{r}/{m}", "evaluate", {
                        "topk.npy": np.stack([BEFORE_TOP] * R), "metrics.json": {
                            "mode": m, "control": control, "recommender": r, "n_perturbed": 4, "n_replicates": R,
                            "per_k": per_k(control, e, eps_list[0], r), "accuracy_after": {"hr@5": 0.3},
                            "rank_shift": None}})
                for eps in EPS:
                    cell = cell_name(e, "pgd", eps)
                    for control, prefix in (("attack", f"evaluate/{cell}"), ("placebo", f"evaluate/{cell}/placebo")):
                        top = BEFORE_TOP.copy()
                        if control == "attack" and e == "standard" and eps == 8.0:
                            top[3] = [0, 1, 4, 5, 6, 7, 8, 9, 10, 11]  # user 3 gains two sandals in the top 5
                            top[1] = [0, 4, 5, 6, 7, 8, 9, 10, 11, 1]
                        keys[f"{prefix}/{r}/{m}"] = _put(store, f"{prefix}/{r}/{m}", "evaluate", {
                            "topk.npy": np.stack([top] * R), "metrics.json": {
                                "mode": m, "control": control, "recommender": r, "n_perturbed": 4,
                                "n_replicates": R, "per_k": per_k(control, e, eps, r),
                                "accuracy_after": {"hr@5": 0.29, "hr@10": 0.48},
                                "rank_shift": {"mean": -2.0, "median": -1.5}}})
    return store, keys, _spec()


def _run(store, keys, spec, out, **params) -> StepContext:
    out.mkdir()
    step = Step("report", "report", {"spec": spec, "gallery_users": 1, **params}, {"steps": list(keys)}, "0" * 64,
                "orchestrate")
    ctx = StepContext(step, store, out, dict(keys))
    step_report(ctx)
    return ctx


@pytest.fixture(scope="module")
def report(fake_run, tmp_path_factory):
    store, keys, spec = fake_run
    out = tmp_path_factory.mktemp("report") / "out"
    _run(store, keys, spec, out)
    return out


def _results(report) -> dict:
    return json.loads((report / "results.json").read_text())


def _findings(res: dict, fid: str) -> list[dict]:
    return [f for f in res["findings"] if f["id"] == fid]


def test_statistics_on_hand_made_numbers():
    # Benjamini-Hochberg: sorted p .01 .03 .04 .2 (m = 4) -> .04, .06, .0533, .2 -> monotone from the top
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert benjamini_hochberg([]) == []
    # exact McNemar: 9 vs 1 discordant pairs -> 2 * P(X <= 1 | n = 10, 1/2) = 2 * 11 / 1024
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(0, 0) is None and mcnemar_exact(3, 3) == pytest.approx(1.0)
    # Spearman by exact permutation: a perfect order of 5 points is 2 of 5! pairings, of 9 points 2 of 9!
    assert spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]) == pytest.approx((1.0, 2 / 120))
    assert spearman(list(range(9)), list(range(9))[::-1]) == pytest.approx((-1.0, 2 / 362_880))
    # 12 points: seeded random pairings, p floored at (1 + 0) / (1 + draws) per tail, never 0
    assert spearman(list(range(12)), list(range(12))) == pytest.approx((1.0, 2 / (1 + PERMUTATIONS)))
    # the same as a brute-force enumeration with scipy's spearmanr (ties included)
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 4, 6).astype(float), rng.random(6)
    rho = stats.spearmanr(x, y).statistic
    null = np.array([stats.spearmanr(x, y[list(p)]).statistic for p in itertools.permutations(range(6))])
    p_ref = min(1.0, 2 * min(np.mean(null >= rho - 1e-12), np.mean(null <= rho + 1e-12)))
    assert spearman(x, y) == pytest.approx((rho, p_ref))
    # 4 points can never reach p < .05
    assert spearman([1, 2, 3, 4], [1, 2, 3, 4])[1] == pytest.approx(2 / 24)


def test_finding_d_says_rather_than_only_when_the_sr_does_not_correlate():
    def res(fl_sig: bool, sr_sig: bool) -> dict:
        rows = [{"mode": "deployment", "k": 10, "with": w, "n": 9, "rho": r, "p_value": p, "p_adjusted": p,
                 "significant": sig} for w, r, p, sig in (("feature_mse", -1.0, 0.002, fl_sig),
                                                          ("sr", -0.91, 0.013 if sr_sig else 0.2, sr_sig))]
        return {"correlations": rows, "alpha": 0.05}

    assert finding_d(res(True, False), 10, "deployment")["answer"] == "yes"
    both = finding_d(res(True, True), 10, "deployment")  # |rho| larger, but no test compares the two
    assert both["answer"] == "partly" and "cannot be told apart" in both["statement"]
    assert finding_d(res(False, True), 10, "deployment")["answer"] == "no"
    assert finding_d(res(False, False), 10, "deployment")["answer"] == "no"


def test_every_test_is_adjusted_and_verdicts_use_the_adjusted_p(report):
    res = _results(report)
    assert res["schema_version"] == 2 and "NaN" not in (report / "results.json").read_text()
    tests = res["tests"]
    # 40 evaluations x 2 K x 2 metrics + 16 attack-vs-placebo x 2 x 2 + 2 McNemar + 2 modes x 2 correlations
    assert tests["n_tests"] + tests["n_untestable"] == 160 + 64 + 2 + 4
    for e in res["evaluations"]:
        for row in e["per_k"]:
            m = row["chr"]
            assert m["p_adjusted"] >= m["p_value"] and m["significant"] == (m["p_adjusted"] <= 0.05)
            assert m["effect"] == pytest.approx(float(np.mean(diffs(e["control"], e["extractor"], e["eps"],
                                                                    e["recommender"]))))


def test_findings_recover_the_planted_truth(report):
    res = _results(report)
    assert [f["answer"] for f in _findings(res, "o")] == ["yes", "yes"]
    a = {(f["extractor"], f["eps"]): f for f in _findings(res, "a")}
    assert a["standard", 8.0]["answer"] == "yes" and a["standard", 8.0]["rose"] == 4
    assert a["standard", 8.0]["beyond_placebo"] == 4  # and each rise exceeded its placebo's
    assert a["standard", 4.0]["answer"] == "no" and a["standard", 4.0]["unchanged"] == 4
    assert a["pgd_at", 8.0]["rose"] == 2 and a["pgd_at", 4.0]["answer"] == "no"
    assert "rose in 4 of 4 cells, fell in 0, unchanged in 0" in a["standard", 8.0]["statement"]
    b = {f["eps"]: f for f in _findings(res, "b")}
    # 4 images fooled under standard, none under pgd_at: lower, but 4 discordant pairs cannot be significant
    assert b[8.0]["base_only"] == 4 and b[8.0]["defense_only"] == 0 and b[8.0]["p_value"] == pytest.approx(0.125)
    assert b[8.0]["answer"] == "no" and "not significantly" in b[8.0]["statement"]
    c = {f["eps"]: f for f in _findings(res, "c")}
    assert c[8.0]["answer"] == "partly" and c[8.0]["n_still_risen"] == 2 and c[4.0]["answer"] == "n/a"


def test_correlations_count_distinct_cells_per_mode(report):
    res = _results(report)
    corr = res["correlations"]
    assert {(c["mode"], c["with"]) for c in corr} == {(m, w) for m in MODES for w in ("feature_mse", "sr")}
    assert all(c["n"] == len(EXTS) * len(EPS) for c in corr)  # 4 cells, not 16 recommender x mode rows
    # 4 points cannot reach p < 0.05 (2/4! = 0.083): not tested, and (d) answers n/a rather than "no"
    assert all(c["p_value"] is None and c["rho"] is None for c in corr)
    d = [f for f in res["findings"] if f["id"] == "d"]
    assert len(d) == len(MODES) and all(f["answer"] == "n/a" and "at least 5" in f["statement"] for f in d)


def test_the_documented_way_to_read_the_tidy_export_runs_without_pandas(report):
    """docs/report.md showed only pandas, which advrec does not install: the snippet it shows now runs in an
    install without pandas (pyarrow and the standard library), and pandas is an extra of its own."""
    import re
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "report.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    blocked = ("import sys\n\nclass NoPandas:  # an install without pandas\n    def find_spec(self, name, *_):\n"
               "        if name.split('.')[0] == 'pandas':\n            raise ModuleNotFoundError(name)\n\n"
               "sys.meta_path.insert(0, NoPandas())\n")
    proc = subprocess.run([sys.executable, "-c", blocked + snippet], cwd=report, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\d+ rows; chr", proc.stdout, re.M) and "delta: double" in proc.stdout, proc.stdout
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("pandas") for d in extras["pandas"]) and "pip install 'advrec[pandas]'" in doc
    assert "pandas" not in " ".join(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"])


def test_tables_are_tidy_for_pandas(report):
    long = pd.read_csv(report / "tables" / "long.csv")
    assert len(long) == 40 * 2 * 3 and set(long["control"]) == {"attack", "placebo", "oracle"}
    assert long["delta"].dtype.kind == "f" and long["significant"].dtype == bool and long["k"].dtype.kind == "i"
    assert (long["unit"].str.len() > 10).all()
    pq = pd.read_parquet(report / "tables" / "long.parquet")
    assert list(pq.columns) == list(long.columns) and len(pq) == len(long)
    cat = pd.read_csv(report / "tables" / "category_metrics_retrain.csv")
    assert cat["CHR@10 effect"].dtype.kind == "f"  # no '*' glued to numbers
    assert set(cat["CHR@10 significant"]) <= {"yes", "no"}
    scen = pd.read_csv(report / "tables" / "scenario.csv")
    assert any("CHR@20" in c and "per top-20 list" in c for c in scen.columns)  # K and unit stated


def test_html_is_self_contained_with_images_and_findings(report):
    html = (report / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for png in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "placebo" in html and "oracle" in html and "Benjamini-Hochberg" in html
    res = _results(report)
    for f in res["findings"]:
        assert str(escape(f["statement"])) in html


def test_gallery_picks_the_first_significant_rise(report):
    g = _results(report)["gallery"]
    assert g["extractor"] == "standard" and g["eps"] == 8.0 and g["significant"]
    assert g["users"][0]["user"] == "u3" and g["users"][0]["gain"] == 2


def test_summary_text_and_format_summary_agree(report):
    res = _results(report)
    text = format_summary(res)
    assert (report / "summary.txt").read_text().strip() == text.strip()
    assert "placebo effect" in text and "oracle effect" in text and "Benjamini-Hochberg" in text


def test_bad_input_raises_typed_errors_and_writes_nothing(fake_run, tmp_path):
    store, keys, spec = fake_run
    with pytest.raises(InvalidInput, match="spec"):
        _run(store, keys, {"name": "x"}, tmp_path / "a")
    assert not any((tmp_path / "a").iterdir())
    missing = "evaluate/pgd_at/pgd/eps8/amr/deployment"
    with pytest.raises(NotFound, match=missing):
        _run(store, {k: v for k, v in keys.items() if k != missing}, spec, tmp_path / "b")
    assert not any((tmp_path / "b").iterdir())


def test_no_dataset_input_gives_a_report_without_gallery(fake_run, tmp_path):
    store, keys, spec = fake_run
    _run(store, {k: v for k, v in keys.items() if k != "dataset"}, spec, tmp_path / "o", gallery_users=0)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["gallery"] is None and res["dataset"] is None
    assert "No gallery" in (tmp_path / "o" / "report.html").read_text()


def test_rises_and_falls_together_answer_partly_not_yes():
    """(a) and (o) on hand-made cells: a rise in 1 cell with falls in 3 is 'partly', never 'yes'."""
    from advrec.report.findings import finding_a, finding_oracle

    def ev(control, rec, mode, effect, significant):
        row = {"k": 10, "chr": {"effect": effect, "ci_low": effect - 0.01, "ci_high": effect + 0.01,
                                "p_value": 0.01, "p_adjusted": 0.02 if significant else 0.4, "significant": significant}}
        return {"control": control, "extractor": "std", "method": "pgd", "eps": 8.0, "recommender": rec, "mode": mode,
                "n_replicates": 3, "per_k": [row]}

    def results(signs):
        cells = [("vbpr", "retrain"), ("vbpr", "deployment"), ("amr", "retrain"), ("amr", "deployment")]
        evs = []
        for control in ("attack", "oracle"):
            evs += [ev(control, r, m, 0.02 * s if s else 0.001, bool(s)) for (r, m), s in zip(cells, signs, strict=True)]
        return {"evaluations": evs, "scenario": {"origin": "shirt"}, "alpha": 0.05}

    for signs, answer in (((+1, -1, -1, -1), "partly"), ((+1, 0, 0, 0), "yes"), ((0, -1, -1, 0), "no"),
                          ((0, 0, 0, 0), "no"), ((+1, +1, 0, -1), "partly")):
        res = results(signs)
        a, o = finding_a(res, "std", "pgd", 8.0, 10), finding_oracle(res, "std", 10, "shirt")
        assert (a["answer"], o["answer"]) == (answer, answer), (signs, a["statement"], o["statement"])
        assert a["statement"].startswith(answer.capitalize() + ":")
        rose, fell = signs.count(1), signs.count(-1)
        assert f"rose in {rose} of 4 cells, fell in {fell}, unchanged in {4 - rose - fell}" in a["statement"]
    assert "moved both ways" in finding_a(results((+1, -1, 0, 0)), "std", "pgd", 8.0, 10)["statement"]


def test_defenses_are_compared_with_a_standard_extractor_of_their_backbone():
    from advrec.report.collect import defense_baselines, extractor_defense

    # the own-catalog walkthrough: ImageNet Lite0 is another reference, not a defense of the CNN
    exts = {"imagenet": {"defense": "standard", "backbone": "efficientnet_lite0"},
            "cnn": {"defense": "standard", "backbone": "small_cnn"},
            "cnn_pgd_at": {"defense": "pgd_at", "backbone": "small_cnn"}}
    assert defense_baselines(exts, list(exts)) == {"cnn_pgd_at": "cnn"}
    # a robust ResNet50 with no standard ResNet50: the first standard extractor; undeclared ones compared too
    exts = {"cnn": {"defense": "standard", "backbone": "small_cnn"},
            "madry": {"defense": "pgd_at", "backbone": "resnet50"}, "mine": {"defense": None, "backbone": "resnet18"}}
    assert defense_baselines(exts, list(exts)) == {"madry": "cnn", "mine": "cnn"}
    # nothing declared standard: the first extractor is the reference (as before defenses were declared)
    exts = {"a": {"defense": None}, "b": {"defense": None}, "c": {"defense": "free_at"}}
    assert defense_baselines(exts, list(exts)) == {"b": "a", "c": "a"}
    # named weights carry the defense they were published with
    assert extractor_defense({"source": "named", "weight_name": "efficientnet_lite0:imagenet"}) == "standard"
    assert extractor_defense({"source": "named", "weight_name": "resnet50:madry_linf_4"}) == "pgd_at"
    assert extractor_defense({"source": "named", "weight_name": "resnet50:free_at_eps4"}) == "free_at"
    assert extractor_defense({"source": "checkpoint", "defense": None}) is None
    assert extractor_defense({"source": "demo", "defense": "free_at"}) == "free_at"


def test_a_baseline_of_another_backbone_is_said_in_findings_b_and_c():
    from advrec.report.findings import finding_b

    results = {"extractors": {"imagenet": {"defense": "standard", "backbone": "efficientnet_lite0"},
                              "robust": {"defense": "pgd_at", "backbone": "small_cnn", "weak": False}},
               "attacks": [], "alpha": 0.05}
    pair = {"baseline": "imagenet", "extractor": "robust", "method": "fgsm", "eps": 8.0, "n_paired": 10,
            "base_only": 10, "defense_only": 0, "p_value": 0.002, "p_adjusted": 0.06, "significant": False}
    f = finding_b(results, pair)
    assert f["answer"] == "no" and not f["same_backbone"]
    assert "robust (small_cnn) is compared with imagenet (efficientnet_lite0), another backbone" in f["statement"]
    results["extractors"]["imagenet"]["backbone"] = "small_cnn"
    f = finding_b(results, pair)
    assert f["same_backbone"] and "Caveat" not in f["statement"]


def test_origin_recognition_reads_the_classifier_the_attacks_aim_at():
    """Hand-made features: the share of origin items that the extractor's classifier, or the fitted category
    head, assigns to the origin on clean images; None where categories are the extractor's own classes."""
    from advrec.report.collect import _origin_recognition
    from services.extractor.artifacts import FeatureSet

    def feature_set(features, classes, class_names, used="catalog", head=None):
        return FeatureSet(features=features, classes=classes, probs=np.ones(6, np.float32), spatial=None,
                          class_names=class_names, categories=cats, category_names=["shoe", "bag"],
                          category_info={"used": used}, head=head)

    cats = np.array([0, 0, 0, 0, 1, 1])  # items 0-3 are 'shoe' (the origin)
    zeros = np.zeros((6, 2), np.float32)
    own = feature_set(zeros, np.array([0, 0, 1, 1, 1, 1]), ["shoe", "bag"])
    assert _origin_recognition(own, "shoe") == 0.5  # the extractor reads 2 of the 4 shoes as shoes
    own = feature_set(zeros, cats.copy(), ["shoe", "bag"])  # reads every item right: 1.0, not "uninformative"
    assert _origin_recognition(own, "shoe") == 1.0
    own = feature_set(zeros, cats.copy(), ["shoe", "bag"], used="extractor")  # its predictions: 1 by construction
    assert _origin_recognition(own, "shoe") is None
    # a head on 2-d features: logit(shoe) = x0, logit(bag) = x1; 3 of the 4 shoes have x0 > x1
    feats = np.array([[2, 0], [1, 0], [3, 1], [0, 5], [0, 1], [0, 2]], np.float32)
    head = feature_set(feats, np.zeros(6, int), ["tench", "goldfish"],
                       head=(np.eye(2, dtype=np.float32), np.zeros(2, np.float32)))
    assert _origin_recognition(head, "shoe") == 0.75
    assert _origin_recognition(head, "hat") is None


def test_oracle_share_wording():
    from advrec.report.findings import _share_text

    assert _share_text(0.4) == "40% of the oracle's"
    assert _share_text(-1.55) == "opposite to the oracle's, 1.6x its size"


def test_one_replicate_gives_untested_findings_not_no():
    """replicates: 1 has no test across replicates: (a), (o) and (c) say 'untested', never 'no'; and a run
    without placebo does not claim '0 of n exceeded the placebo'."""
    from advrec.report.findings import finding_a, finding_c, finding_oracle

    def ev(control, ext, rec, effect):
        row = {"k": 10, "chr": {"effect": effect, "ci_low": None, "ci_high": None, "p_value": None,
                                "p_adjusted": None, "significant": False}}
        return {"control": control, "extractor": ext, "method": "pgd", "eps": 8.0, "recommender": rec,
                "mode": "retrain", "n_replicates": 1, "per_k": [row]}

    res = {"evaluations": [ev(c, x, r, 0.03) for c in ("attack", "oracle") for x in ("std", "rob") for r in ("vbpr", "amr")],
           "scenario": {"origin": "shirt"}, "alpha": 0.05}
    a, o = finding_a(res, "std", "pgd", 8.0, 10), finding_oracle(res, "std", 10, "shirt")
    c = finding_c(res, "std", "rob", "pgd", 8.0, 10)
    assert (a["answer"], o["answer"], c["answer"]) == ("n/a", "n/a", "n/a")
    assert all(f["statement"].startswith("Untested:") and "one replicate" in f["statement"] for f in (a, o, c))
    assert a["untested"] == 2 and "placebo" not in a["statement"]
    # tested cells without a placebo control: the count is stated, the placebo clause says there was none
    for e in res["evaluations"]:
        e["per_k"][0]["chr"].update(p_value=0.01, p_adjusted=0.02, significant=True)
    a = finding_a(res, "std", "pgd", 8.0, 10)
    assert a["answer"] == "yes" and "(no placebo in this run, so a change counts when it is significant: controls)" \
        in a["statement"]


def test_float_noise_of_a_zero_effect_prints_as_zero():
    """Replicate differences that cancel (CHR steps of 1/(U*K)) leave ~1e-17 of float noise, which the
    tables, findings and CSVs show as 0; a real effect, however small, keeps its value."""
    from advrec.report.collect import effect_value, signed
    from advrec.report.findings import effect_text
    from advrec.report.tables import effect_cell

    noise = (0.15 - 0.14) + (0.13 - 0.14)
    assert noise != 0 and abs(noise) < 1e-15
    m = {"effect": noise, "ci_low": -0.0018, "ci_high": 0.0018 + noise, "p_adjusted": 1.0}
    assert effect_cell(m) == "+0 [-0.0018, +0.0018]"
    assert effect_text(m).startswith("+0 [-0.0018, +0.0018], adj. p=")
    assert effect_value(noise) == 0.0 and effect_value(2e-8) == 2e-8 and effect_value(None) is None
    assert signed(-3.2e-8) == "-3.2e-08" and signed(0.01234) == "+0.0123"


def test_replicates_that_tie_say_so_instead_of_an_interval():
    from advrec.report.findings import effect_text
    from advrec.report.tables import effect_cell
    from services.recommender.metrics.effects import replicate_effect

    tied = replicate_effect([0.0787, 0.0730, 0.0762], [0.0597, 0.0540, 0.0572])  # each fell by 0.019
    assert tied["ci_low"] is None and tied["test"].startswith("exact sign-flip")
    assert effect_cell(tied) == "-0.019 (all 3 equal)"
    assert effect_text({**tied, "p_adjusted": 0.33}) == "-0.019 (all 3 equal), adj. p=0.33"
    assert effect_cell(replicate_effect([0.07], [0.05])) == "-0.02"  # one replicate: no interval, nothing to say


def test_a_rise_no_larger_than_its_placebos_is_not_a_yes():
    """(a) counts a cell only when its change is significant *and* beyond its placebo's: the pure-noise
    attack of issue 20 rose significantly against the clean model exactly as much as its placebo did, and
    (a) had answered "Yes: ... raised"."""
    from advrec.report.findings import direction, finding_a

    def cell(effect, significant, beyond_effect, beyond_significant, beyond_p=0.01):
        chr_ = {"effect": effect, "ci_low": effect - 0.01, "ci_high": effect + 0.01, "p_value": 0.001,
                "p_adjusted": 0.01 if significant else 0.5, "significant": significant,
                "beyond_placebo": {"effect": beyond_effect, "p_value": beyond_p,
                                   "p_adjusted": 0.02 if beyond_significant else 0.6,
                                   "significant": beyond_significant}}
        return {"control": "attack", "extractor": "std", "method": "pgd", "eps": 8.0, "recommender": "vbpr",
                "mode": "retrain", "n_replicates": 3, "per_k": [{"k": 10, "chr": chr_}]}

    like_placebo = cell(0.02, True, 0.0004, False)
    beyond = cell(0.02, True, 0.015, True)
    opposite = cell(0.02, True, -0.01, True)  # rose against the clean model, less than its placebo
    assert [direction(c["per_k"][0]["chr"]) for c in (like_placebo, beyond, opposite)] == \
        ["like placebo", "rose", "like placebo"]
    for evaluation, answer in ((like_placebo, "no"), (beyond, "yes"), (opposite, "no")):
        res = {"evaluations": [evaluation], "scenario": {"origin": "shirt"}, "alpha": 0.05}
        f = finding_a(res, "std", "pgd", 8.0, 10)
        assert f["answer"] == answer, f["statement"]
    text = finding_a({"evaluations": [like_placebo], "scenario": {"origin": "shirt"}, "alpha": 0.05},
                     "std", "pgd", 8.0, 10)["statement"]
    assert "moved no more than its placebo in 1" in text and "beyond its placebo's" in text
    # a fall counts the same way: significant and beyond the placebo, with the same sign
    assert direction(cell(-0.02, True, -0.015, True)["per_k"][0]["chr"]) == "fell"
    assert direction(cell(-0.02, True, -0.015, False)["per_k"][0]["chr"]) == "like placebo"


def test_every_finding_starts_with_the_caveat_when_even_the_oracle_cannot_raise_exposure(report):
    """A scenario whose oracle, measured in deployment before any attack, raised nothing: every finding says
    first that a 'no' says nothing about robustness; a feasible one adds nothing."""
    from advrec.report.findings import derive_findings

    results = _results(report)
    results["scenario"]["feasibility"] = {
        "measured": True, "k": 10, "feasible": False,
        "chosen": {"origin": "sandal", "target": "sneaker", "effect": -0.002, "p_adjusted": 0.9, "n_pairs": 9}}
    findings = derive_findings(results)
    assert findings and all(f["statement"].startswith("On this catalog even a perfect visual disguise did not raise "
                                                      "exposure") for f in findings)
    assert all("a 'no' says nothing about robustness" in f["statement"] and f["infeasible_scenario"] for f in findings)
    assert "'sandal' -> 'sneaker'" in findings[0]["statement"] and "9 candidate pairs" in findings[0]["statement"]
    results["scenario"]["feasibility"]["feasible"] = True
    assert not any("perfect visual disguise" in f["statement"] for f in derive_findings(results))


def test_the_ladders_verdicts_on_hand_made_rungs():
    """(l): a rung protects only when the adaptive attacker's change is no significant rise *and* its interval lies
    below the undefended gain; a significant rise beyond its placebo is a failure (said even when the non-adaptive
    attacker made it look protective); a "no rise" whose interval reaches the undefended gain is inconclusive; an
    adaptive attacker that succeeds less often than the non-adaptive one is flagged as a defect."""
    from advrec.report.ladder import _holds, finding_l

    threat = {"effect": 0.01, "label": "PGD eps 8 on the origin's CHR@10 (deployment)"}
    assert _holds({"verdict": "unchanged", "effect": 0.001, "ci_low": -0.002, "ci_high": 0.004}, threat) == "holds"
    assert _holds({"verdict": "unchanged", "effect": 0.009, "ci_low": -0.001, "ci_high": 0.02}, threat) == "inconclusive"
    assert _holds({"verdict": "rose", "effect": 0.012, "ci_low": 0.004, "ci_high": 0.02}, threat) == "collapses"
    assert _holds({"verdict": "untested", "effect": 0.0}, threat) == "untested"

    def rung(name, holds, adaptive, non_adaptive=None, weaker=()):
        return {"rung": name, "what": name, "cost_points": {"hr@10": 0.5}, "holds": holds, "adaptive": adaptive,
                "non_adaptive": non_adaptive, "weaker_adaptive": list(weaker)}

    rows = [rung("jpeg", "holds", {"effect": 0.001, "ci_low": -0.002, "ci_high": 0.004, "verdict": "unchanged"}),
            rung("bits", "collapses", {"effect": 0.012, "ci_low": 0.004, "ci_high": 0.02, "verdict": "rose"},
                 {"effect": 0.004, "verdict": "unchanged"}, weaker=["PGD eps 8"])]
    results = {"ladder": {"threat": threat, "rows": rows, "baseline": "standard", "recommender": "vbpr"}}
    (f,) = finding_l(results)
    assert f["answer"] == "partly" and f["protects"] == ["jpeg"] and f["collapses"] == ["bits"]
    assert "looked protective" in f["statement"] and "WARNING" in f["statement"]
    results["ladder"]["rows"] = [rows[0]]
    assert finding_l(results)[0]["answer"] == "yes"
    results["ladder"]["threat"] = None
    assert finding_l(results)[0]["answer"] == "n/a" and "Nothing to protect" in finding_l(results)[0]["statement"]


def test_a_weaker_adaptive_promotion_is_flagged_only_when_significantly_weaker_on_its_own_objective():
    """Promotion: the adaptive attacker's objective (insa: the score) per item against the non-adaptive one's, in
    deployment over items: flagged when significantly lower, not when equal up to noise or higher."""
    from advrec.report.ladder import _weaker_promotion

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.4, size=(3, 20))

    def ev(ext, shift):
        return {"extractor": ext, "method": "insa", "eps": 8.0, "recommender": "vbpr", "mode": "deployment",
                "control": "attack", "source": "standard" if ext.endswith(".nonadaptive") else None,
                "per_replicate": [{"prediction_shift": list(row)} for row in shift]}

    def flags(adaptive_shift):
        results = {"promotion": {"k": 10, "evaluations": [ev("jpeg", adaptive_shift), ev("jpeg.nonadaptive", base)]}}
        return _weaker_promotion(results, "jpeg")

    assert flags(base * 0.5) and "INSA eps 8 on vbpr (deployment): score" in flags(base * 0.5)[0]
    assert flags(base + rng.normal(0, 1e-3, base.shape)) == []  # as strong, up to noise
    assert flags(base * 1.5) == []


def test_the_ladder_reads_float_noise_of_a_zero_change_as_zero():
    """A detector that blocked every upload leaves each replicate's change at 0 up to float rounding: the ladder
    reports +0, not +1.2e-18; a real (if tiny) CHR step stays as it is."""
    from advrec.report.ladder import _exact

    assert _exact(1.16e-18) == 0.0 and _exact(-3e-17) == 0.0
    assert _exact(5.56e-6) == 5.56e-6 and _exact(None) is None and _exact(float("nan")) is None
