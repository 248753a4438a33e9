"""Calibration of advrec's verdicts: how often does noise come out "significant"?

Runs null cells on the demo catalog (standard demo extractor, VBPR by default) and prints, per
mode, the false-positive rate at alpha = 0.05 of the test advrec's verdicts use (paired t-test
across R replicates) next to the study's test (paired t-test over users of one model pair), and
the detection rate (power) of the oracle, the positive control.

Null cells (the origin category varies over the catalog's categories and the seeds over blocks):

* **seed-only**: before = the clean models of seeds s..s+R-1, after = clean models of seeds
  s+R..s+2R-1 trained on the same clean features (retrain). In deployment nothing is retrained, so
  re-scoring the clean features changes nothing: its false-positive rate is 0 by construction.
* **placebo**: the origin items' images perturbed by the delivered PGD eps-8 perturbation shuffled
  over each image's pixels (a new draw per replicate), re-extracted; retrain fits R models on them,
  deployment re-scores with the R clean models.

Positive control: the origin items' features set to the target category's mean feature.

    .venv/bin/python benchmarks/calibration.py              # 20 + 20 null cells per mode, R = 3
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
from services.recommender.metrics.category import chr_at_k  # noqa: E402
from services.recommender.metrics.effects import replicate_effect  # noqa: E402
from services.recommender.metrics.significance import paired_tests  # noqa: E402
from services.recommender.models import build_recommender  # noqa: E402
from services.recommender.scoring import topk  # noqa: E402

ALPHA = 0.05


def fit(rec: str, ds, features: np.ndarray, seed: int):
    model = build_recommender(rec, ds.n_users, ds.n_items, {"seed": seed, "device": "cpu"})
    model.fit(ds.train, ItemSide(features=torch.as_tensor(features)))
    return model


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
    ap.add_argument("--cells", type=int, default=20, help="null cells of each kind (seed-only, placebo) per mode")
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

    blocks = -(-args.cells // len(categories))  # seed blocks: each cell compares two disjoint blocks of R seeds
    clean_models = {s: fit(rec, ds, F, s) for s in range(2 * R * blocks)}
    clean_lists = {s: lists(m, ds, k) for s, m in clean_models.items()}
    chr_all = {c: [chr_at_k(clean_lists[s], cats, c, k)[0] for s in range(R)] for c in categories}
    target = max(categories, key=lambda c: float(np.mean(chr_all[c])))

    rows: dict[tuple[str, str], list[tuple[float | None, float | None]]] = {}

    def record(kind: str, mode: str, before: list[torch.Tensor], after: list[torch.Tensor], origin: int) -> None:
        b, ub = chr_values(before, cats, origin, k)
        a, ua = chr_values(after, cats, origin, k)
        rows.setdefault((kind, mode), []).append((replicate_effect(b, a)["p_value"], paired_tests(ub, ua)["t_pvalue"]))

    # seed-only nulls (retrain): disjoint seed blocks, origin cycling over the categories
    for cell in range(args.cells):
        origin = categories[cell % len(categories)]
        base = R * (2 * (cell // len(categories)))
        before = [clean_lists[base + r] for r in range(R)]
        after = [clean_lists[base + R + r] for r in range(R)]
        record("seed-only", "retrain", before, after, origin)
        record("seed-only", "deployment", before, before, origin)  # re-scoring unchanged features

    # placebo nulls and the oracle (positive control): one PGD eps-8 attack per origin category
    spec = AttackSpec(method="pgd", eps=8, steps=10, seed=0)
    for cell in range(args.cells):
        origin = categories[cell % len(categories)]
        if origin == target:
            origin = categories[(cell + 1) % len(categories)]
        idx = np.flatnonzero(res.classes == origin)
        clean_u8 = load_catalog_images(ds.catalog, idx.tolist())
        out = attack_and_measure(model, to_tensor(clean_u8), spec, names.index(names[target]), "png8")
        plc = placebo_images(clean_u8, to_u8(out.delivered), R, seed=cell)
        before = [clean_lists[r] for r in range(R)]
        sides = []
        for r in range(R):
            feats = F.copy()
            feats[idx] = extract_features(model, plc[r], device="cpu").features
            sides.append(feats)
        record("placebo", "retrain", before, [lists(fit(rec, ds, sides[r], r), ds, k) for r in range(R)], origin)
        record("placebo", "deployment", before, [lists(clean_models[r], ds, k, sides[r]) for r in range(R)], origin)
        if cell < len(categories):  # one oracle per origin category
            items, orows = oracle_rows(F, res.classes, origin, target)
            oracle = F.copy()
            oracle[items] = orows
            record("oracle", "retrain", before, [lists(fit(rec, ds, oracle, r), ds, k) for r in range(R)], origin)
            record("oracle", "deployment", before, [lists(clean_models[r], ds, k, oracle) for r in range(R)], origin)
        print(f"  cell {cell + 1}/{args.cells} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    def rate(ps: list[float | None]) -> str:
        tested = [p for p in ps if p is not None]
        hits = sum(p <= ALPHA for p in tested)
        return f"{hits}/{len(tested)} = {hits / len(tested):.3f}" if tested else "n/a"

    print(f"\nfalse-positive rate at alpha = {ALPHA} (null cells) and power (oracle); target FPR <= 0.07")
    print(f"{'cells':<12} {'mode':<11} {'n':>3}  {'replicate test (verdicts)':<28} {'study test (users, 1 pair)':<28}")
    for (kind, mode), vals in rows.items():
        rep, usr = [v[0] for v in vals], [v[1] for v in vals]
        print(f"{kind:<12} {mode:<11} {len(vals):>3}  {rate(rep):<28} {rate(usr):<28}")
    null = [v[0] for (kind, _), vals in rows.items() if kind != "oracle" for v in vals]
    print(f"\nall null cells, replicate test: {rate(null)}; wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
