"""R seeds of one recommender: one batched fit (``fit_replicates``) against R separate fits, CPU time and speed-up.

Run: ``.venv/bin/python benchmarks/replicates.py [--replicates 3,5 --models bprmf,vbpr,amr,deepstyle]``

Data: ``make_interactions`` with MovieLens-100k's shape (943 users, 1682 items, 100k interactions)
and 2048-d features, seeded. Study preset (batch 512, Adagrad) for ``--epochs`` epochs, no early
stopping, one thread, CPU time (``time.process_time``) of the whole fits; the separate and the
batched runs alternate ``--repeats`` times and the medians are printed. The batched weights are
checked against the separate ones (max |difference|).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from services.recommender.models import build_recommender
from services.recommender.replicates import batched, fit_replicates
from services.recommender.synthetic import make_interactions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicates", default="3,5")
    p.add_argument("--models", default="bprmf,vbpr,amr,deepstyle")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--feature-dim", type=int, default=2048)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    inter, items = make_interactions(943, 1682, 100_000, args.feature_dim, seed=0)
    items = items.replace(categories=torch.arange(inter.n_items) % 20)
    print(f"{inter.n_users} users x {inter.n_items} items, {len(inter)} pairs, {args.feature_dim}-d features; "
          f"study preset, batch {args.batch}, {args.epochs} epochs, one thread, CPU-s (median of {args.repeats})")
    print(f"{'model':<10} {'R':>2} {'R separate fits':>16} {'one batched fit':>16} {'speed-up':>9} {'max |dw|':>10}")
    for name in args.models.split(","):
        cfg = {"preset": "study", "epochs": args.epochs, "patience": 0, "batch_size": args.batch}
        if name == "amr":
            cfg["adv_start"] = 0.34  # mostly adversarial epochs
        for r in map(int, args.replicates.split(",")):
            seeds = list(range(r))
            separate, together, diff = [], [], 0.0
            for _ in range(args.repeats):
                t0 = time.process_time()
                alone = []
                for s in seeds:
                    m = build_recommender(name, inter.n_users, inter.n_items, {**cfg, "seed": s})
                    m.fit(inter, items)
                    alone.append(m)
                separate.append(time.process_time() - t0)
                t0 = time.process_time()
                pairs = fit_replicates(name, inter.n_users, inter.n_items, cfg, seeds, inter, items)
                together.append(time.process_time() - t0)
                diff = max(float((a.P - m.P).detach().abs().max()) for (a, _), m in zip(pairs, alone, strict=True))
            sep, tog = statistics.median(separate), statistics.median(together)
            mode = "" if batched(name) else "  (sequential fallback)"
            print(f"{name:<10} {r:>2} {sep:>16.2f} {tog:>16.2f} {sep / tog:>8.2f}x {diff:>10.1e}{mode}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
