"""Recommender speed: training triples/s and full scoring time per model, and CHR/nCDCG evaluation time.

Run: ``.venv/bin/python benchmarks/recommender_speed.py [--users 2000 --items 1000 --models vbpr,acf]``
Synthetic data with visual signal (services.recommender.synthetic); prints one row per model and
the time of CHR@K over all categories plus nCDCG@K on ``--eval-users`` x top-``--eval-k`` lists.
"""

from __future__ import annotations

import argparse
import time

import torch

from services.recommender.metrics.category import chr_all_categories, chr_at_k, ncdcg_at_k
from services.recommender.models import RECOMMENDERS, build_recommender
from services.recommender.scoring import topk
from services.recommender.synthetic import make_synthetic


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--per-user", type=int, default=10)
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--models", default=",".join(RECOMMENDERS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--eval-users", type=int, default=10_000)
    p.add_argument("--eval-k", type=int, default=100)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = make_synthetic(n_users=args.users, n_items=args.items, per_user=args.per_user,
                          feature_dim=args.feature_dim, regions=16, region_dim=32, image_size=args.image_size)
    print(f"device {args.device}, threads {torch.get_num_threads()}; {args.users} users x {args.items} items, "
          f"{len(data.train)} training pairs, {args.epochs} epochs (no early stopping)")
    print(f"{'model':<10} {'triples/s':>10} {'fit s':>7} {'score all ms':>13} {'top-100 all ms':>15}")
    for name in args.models.split(","):
        model = build_recommender(name, args.users, args.items,
                                  {"epochs": args.epochs, "patience": 0, "device": args.device})
        t0 = time.perf_counter()
        report = model.fit(data.train, data.items)
        fit_s = time.perf_counter() - t0
        users = torch.arange(args.users)
        model.score(users[:8])  # warm-up
        _sync(args.device)
        t0 = time.perf_counter()
        model.score(users)
        _sync(args.device)
        score_ms = 1000 * (time.perf_counter() - t0)
        t0 = time.perf_counter()
        topk(model, None, min(100, args.items), exclude=data.train)
        top_ms = 1000 * (time.perf_counter() - t0)
        print(f"{name:<10} {report.triples_per_second:>10.0f} {fit_s:>7.1f} {score_ms:>13.1f} {top_ms:>15.1f}")

    gen = torch.Generator().manual_seed(0)
    n_items, n_cat = 5000, 50
    top = torch.stack([torch.randperm(n_items, generator=gen)[: args.eval_k] for _ in range(args.eval_users)])
    cats = torch.randint(0, n_cat, (n_items,), generator=gen)
    t0 = time.perf_counter()
    chr_all_categories(top, cats, n_cat, args.eval_k)
    t_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    chr_at_k(top, cats, 3, args.eval_k)
    ncdcg_at_k(top, cats, 3, args.eval_k)
    t_one = time.perf_counter() - t0
    print(f"category metrics on {args.eval_users} users x top-{args.eval_k}: CHR of all {n_cat} categories "
          f"{1000 * t_all:.1f} ms; CHR + nCDCG of one category {1000 * t_one:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
