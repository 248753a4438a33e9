"""R seeds of one recommender: one batched fit (``fit_replicates``) against R separate fits, CPU time and speed-up.

Run: ``.venv/bin/python benchmarks/replicates.py [--replicates 3,5 --models bprmf,vbpr,amr,deepstyle]``

Data: ``make_interactions`` with MovieLens-100k's shape (943 users, 1682 items, 100k interactions)
and 2048-d features, seeded, study preset (batch 512, Adagrad); or ``--shape demo``: the demo's
shape (800 users, 600 items, 11k interactions, 64-d features) with the recommenders' default
settings (what the demo trains). ``--epochs`` epochs, no early stopping, one thread, CPU time (``time.process_time``) of the whole fits; the separate and the
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
    p.add_argument("--batch", type=int, default=None, help="default: 512 (ml100k), the recommender's own (demo)")
    p.add_argument("--feature-dim", type=int, default=None, help="default: 2048 (ml100k), 64 (demo)")
    p.add_argument("--shape", choices=["ml100k", "demo"], default="ml100k")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    demo = args.shape == "demo"
    args.feature_dim = args.feature_dim or (64 if demo else 2048)
    shape = (800, 600, 11_000) if demo else (943, 1682, 100_000)
    inter, items = make_interactions(*shape, args.feature_dim, seed=0)
    items = items.replace(categories=torch.arange(inter.n_items) % 20)
    print(f"{inter.n_users} users x {inter.n_items} items, {len(inter)} pairs, {args.feature_dim}-d features; "
          f"{'default settings' if demo else 'study preset'}, batch {args.batch or ('default' if demo else 512)}, {args.epochs} epochs, one thread, CPU-s (median of {args.repeats})")
    print(f"{'model':<10} {'R':>2} {'R separate fits':>16} {'one batched fit':>16} {'speed-up':>9} {'max |dw|':>10}")
    for name in args.models.split(","):
        cfg = {"epochs": args.epochs, "patience": 0}
        if not demo:
            cfg.update(preset="study", batch_size=args.batch or 512)
        elif args.batch:
            cfg["batch_size"] = args.batch
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
