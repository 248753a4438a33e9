"""Calibration of advrec's verdicts: how often does noise come out "significant"?

Runs null cells on the demo catalog (standard demo extractor, VBPR by default) and prints, per
mode, the false-positive rate at alpha = 0.05 of the tests advrec's verdicts use (paired t-tests
across R replicates) next to the study's test (paired t-test over users of one model pair), and
the detection rate of the oracle, the positive control. Every cell has its own block of seeds
(cells share no model), and the origin category cycles over the catalog's categories.

Null cells, where the tested hypothesis is true:

* **seed-only** (retrain; the attack-vs-clean test of finding a): before = the clean models of R
  seeds, after = the clean models of R other seeds, on the same clean features. In deployment
  nothing is retrained and re-scoring unchanged features changes nothing: not a cell.
* **placebo-vs-placebo** (both modes; the "exceeded its placebo" test of finding a): two
  independent placebo draws of the same size on the origin items (PGD eps-8's delivered
  perturbation shuffled over each image's pixels, one draw per replicate), re-extracted; retrain
  fits the block's R seeds on each, deployment re-scores each with the block's R clean models.
  The test compares the two, replicate by replicate, as ``beyond_placebo`` compares attack and
  placebo.

Not a null, printed for scale: **placebo-vs-clean** (random noise of the attack's size does move
exposure; this is why the findings weigh every attack against its placebo), and the **oracle**
(the origin items' features set to the target category's mean feature): its detection rate and
the direction it moved exposure.

Visual signal of the catalog: the clean accuracy of the recommender next to BPR-MF (no features),
over the same R seeds.

    .venv/bin/python benchmarks/calibration.py              # 40 cells of each kind, R = 3
    .venv/bin/python benchmarks/calibration.py --cells 30 --replicates 5 --recommender amr

Figures are printed, never asserted (see README "Calibration").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from tempfile import mkdtemp

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advrec_common.datasets.demo import DemoConfig, make_demo_dataset  # noqa: E402
from advrec_common.datasets.images import load_catalog_images, to_tensor  # noqa: E402
from advrec_common.store import ArtifactStore  # noqa: E402
from services.attacker.controls import oracle_rows, placebo_images  # noqa: E402
from services.attacker.core import attack_and_measure  # noqa: E402
from services.attacker.delivery import to_u8  # noqa: E402
from services.attacker.spec import AttackSpec  # noqa: E402
from services.extractor.demo_extractors import train_demo_extractor  # noqa: E402
from services.extractor.extraction import extract_features  # noqa: E402
from services.recommender.items import ItemSide  # noqa: E402
from services.recommender.metrics.accuracy import evaluate_accuracy  # noqa: E402
from services.recommender.metrics.category import chr_at_k  # noqa: E402
from services.recommender.metrics.effects import replicate_effect  # noqa: E402
from services.recommender.metrics.significance import paired_tests  # noqa: E402
from services.recommender.models import build_recommender  # noqa: E402
from services.recommender.replicates import fit_replicates  # noqa: E402
from services.recommender.scoring import topk  # noqa: E402

ALPHA = 0.05


def lists(model, ds, k: int, features: np.ndarray | None = None) -> torch.Tensor:
    items = None if features is None else ItemSide(features=torch.as_tensor(features))
    return topk(model, None, k, exclude=ds.train, items=items)[1]


def chr_values(tops: list[torch.Tensor], cats: torch.Tensor, origin: int, k: int) -> tuple[list[float], np.ndarray]:
    """CHR@k per replicate, and the per-user values of replicate 0 (the study's test uses one model pair)."""
    vals, users0 = [], None
    for i, t in enumerate(tops):
        v, u = chr_at_k(t, cats, origin, k, form="normalized")
        vals.append(float(v))
        if i == 0:
            users0 = np.asarray(u, dtype=np.float64)
    return vals, users0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=40, help="cells of each kind (seed-only, placebo-vs-placebo, ...)")
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--recommender", default="vbpr", choices=["vbpr", "amr", "deepstyle"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--home", default=None, help="store for the demo extractor (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("ADVREC_TORCH_THREADS", "1")))
    t_start = time.perf_counter()
    R, k, rec = args.replicates, args.k, args.recommender
    ds = make_demo_dataset(DemoConfig(n_users=600))
    store = ArtifactStore(Path(args.home or mkdtemp(prefix="advrec-calib-")) / "store")
    model, _, _ = train_demo_extractor(store, "standard")
    res = extract_features(model, ds.catalog, device="cpu")
    F = res.features
    names = list(model.class_names)
    cats = torch.as_tensor(res.classes)
    categories = [c for c in range(len(names)) if int((cats == c).sum()) >= 5]
    print(f"demo catalog: {ds.n_items} items, {ds.n_users} users; {rec}, R = {R}, K = {k}; "
          f"{len(categories)} categories with >= 5 items")

    def fit_block(seeds: list[int], features: np.ndarray) -> list:
        return [m for m, _ in fit_replicates(rec, ds.n_users, ds.n_items, {"device": "cpu"}, seeds, ds.train,
                                             ItemSide(features=torch.as_tensor(features)))]

    accuracy = {rec: [], "bprmf": []}
    rows: dict[tuple[str, str], list[tuple[float | None, float | None]]] = {}
    changes: dict[tuple[str, str], list[float]] = {}  # mean CHR@k change per cell

    def record(kind: str, mode: str, before: list[torch.Tensor], after: list[torch.Tensor], origin: int) -> None:
        b, ub = chr_values(before, cats, origin, k)
        a, ua = chr_values(after, cats, origin, k)
        rows.setdefault((kind, mode), []).append((replicate_effect(b, a)["p_value"], paired_tests(ub, ua)["t_pvalue"]))
        changes.setdefault((kind, mode), []).append(float(np.mean(a) - np.mean(b)))

    spec = AttackSpec(method="pgd", eps=8, steps=10, seed=0)
    target = None
    for cell in range(args.cells):
        seeds = list(range(2 * R * cell, 2 * R * cell + R))  # this cell's block: seeds, then R other seeds
        others = [s + R for s in seeds]
        clean = fit_block(seeds, F)
        clean_lists = [lists(m, ds, k) for m in clean]
        if target is None:  # the most exposed category, from the first block (as a scenario would choose)
            target = max(categories, key=lambda c: float(np.mean([chr_at_k(t, cats, c, k)[0] for t in clean_lists])))
            for m in clean:
                accuracy[rec].append(evaluate_accuracy(m, ds.train, ds.test, ks=(k,)))
            for s in seeds:
                mf = build_recommender("bprmf", ds.n_users, ds.n_items, {"seed": s, "device": "cpu"})
                mf.fit(ds.train)
                accuracy["bprmf"].append(evaluate_accuracy(mf, ds.train, ds.test, ks=(k,)))
            print(f"visual signal (test set, mean over {R} seeds): " + "; ".join(
                f"{name} AUC {np.mean([a['auc'] for a in accs]):.4f}, "
                f"HR@{k} {np.mean([a[f'hr@{k}'] for a in accs]):.4f}" for name, accs in accuracy.items()), flush=True)
        candidates = [c for c in categories if c != target]
        origin = candidates[cell % len(candidates)]

        # seed-only (retrain)
        record("seed-only", "retrain", clean_lists, [lists(m, ds, k) for m in fit_block(others, F)], origin)

        # two independent placebo draws of PGD eps-8's delivered size on the origin items
        idx = np.flatnonzero(res.classes == origin)
        clean_u8 = load_catalog_images(ds.catalog, idx.tolist())
        out = attack_and_measure(model, to_tensor(clean_u8), spec, target, "png8")
        delivered = to_u8(out.delivered)
        sets = []
        for draw_seed in (cell, 10_000 + cell):
            plc = placebo_images(clean_u8, delivered, R, seed=draw_seed)
            feats = []
            for r in range(R):
                f = F.copy()
                f[idx] = extract_features(model, plc[r], device="cpu").features
                feats.append(f)
            retrain = [lists(fit_block([seeds[r]], feats[r])[0], ds, k) for r in range(R)]
            deploy = [lists(clean[r], ds, k, feats[r]) for r in range(R)]
            sets.append((retrain, deploy))
        record("placebo-vs-placebo", "retrain", sets[0][0], sets[1][0], origin)
        record("placebo-vs-placebo", "deployment", sets[0][1], sets[1][1], origin)
        record("placebo-vs-clean", "retrain", clean_lists, sets[0][0], origin)
        record("placebo-vs-clean", "deployment", clean_lists, sets[0][1], origin)
        if cell < len(candidates):  # one oracle per origin category
            items, orows = oracle_rows(F, res.classes, origin, target)
            oracle = F.copy()
            oracle[items] = orows
            record("oracle", "retrain", clean_lists, [lists(m, ds, k) for m in fit_block(seeds, oracle)], origin)
            record("oracle", "deployment", clean_lists, [lists(m, ds, k, oracle) for m in clean], origin)
        print(f"  cell {cell + 1}/{args.cells} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    def rate(ps: list[float | None]) -> str:
        tested = [p for p in ps if p is not None]
        hits = sum(p <= ALPHA for p in tested)
        return f"{hits}/{len(tested)} = {hits / len(tested):.3f}" if tested else "n/a"

    print(f"\nfalse-positive rate at alpha = {ALPHA} of the null cells (target <= 0.07); for scale, how often "
          f"placebo noise and the oracle moved CHR@{k} 'significantly'")
    print(f"{'cells':<19} {'mode':<11} {'n':>3}  {'replicate test (verdicts)':<28} {'study test (users, 1 pair)':<28} "
          f"{'rose/fell':<9}")
    for (kind, mode), vals in rows.items():
        rep, usr = [v[0] for v in vals], [v[1] for v in vals]
        ch = changes[(kind, mode)]
        print(f"{kind:<19} {mode:<11} {len(vals):>3}  {rate(rep):<28} {rate(usr):<28} "
              f"{sum(c > 0 for c in ch)}/{sum(c < 0 for c in ch)}")
    null = [v[0] for (kind, _), vals in rows.items() if kind in ("seed-only", "placebo-vs-placebo") for v in vals]
    print(f"\nall null cells, replicate test: {rate(null)}; wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
