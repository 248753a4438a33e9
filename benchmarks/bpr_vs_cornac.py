"""advrec's BPR-MF and VBPR against Cornac's (the best CPU peer), side by side: CPU-s per epoch, ratio, HR/nDCG@10.

Run: ``.venv/bin/python benchmarks/bpr_vs_cornac.py --venv DIR [--epochs 20 --repeats 3]``

The peer runs in its own environment, never the project's: ``--setup-venv`` creates DIR with
``python -m venv DIR; DIR/bin/pip install cornac==3.0.1 torch==2.14.1; DIR/bin/pip install --no-deps
recbole==1.2.1`` (torch only for Cornac's VBPR; RecBole only for the MovieLens-100k file its wheel
ships, ``recbole/dataset_example/ml-100k/ml-100k.inter``, read as data, never imported). Without
that file the data is a seeded synthetic set of ML-100k's shape (943 users, 1682 items, 100k
interactions, Zipf-like popularity), and the script says so.

Protocol: leave-one-out split (each user's last interaction by timestamp is the test item), both
libraries train on the same training pairs for the same number of epochs with one thread; CPU time
(``time.process_time``) of the whole fit / epochs, repeats interleaved (ours, peer, ours, peer, ...)
and the median reported. Both are evaluated by the same code (``rank_and_evaluate``): Cornac's learned
factors are loaded into the equivalent advrec model (BPR: p.q + b; VBPR: Cornac's form is advrec's
``full_vbpr``). VBPR features: seeded random non-negative 2048-d vectors (MovieLens has no images),
scaled to max |F| = 1 so both see the same inputs. Cornac's BPR is per-sample SGD (Cython); advrec
trains mini-batches with Adagrad, so each side gets its own learning rate (flags; the defaults were
picked so both reach the same HR@10 after 20 epochs: Cornac lr 0.1 / lambda 0.001 was its best of
lr {0.01, 0.05, 0.1, 0.2} x lambda {0.01, 0.001}).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from advrec_common.datasets.types import Interactions
from services.recommender.items import ItemSide
from services.recommender.metrics.accuracy import rank_and_evaluate
from services.recommender.models import build_recommender
from services.recommender.pairs import split_last

PEER = Path(__file__).with_name("_cornac_peer.py")


def setup_venv(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["cornac==3.0.1", "torch==2.14.1"], check=True)
    subprocess.run(pip + ["--no-deps", "recbole==1.2.1"], check=True)


def load_data(python: str, seed: int) -> tuple[Interactions, str]:
    """MovieLens-100k from the RecBole wheel in the peer environment, else a synthetic set of its shape."""
    probe = "import importlib.util as u; s = u.find_spec('recbole'); print(s.submodule_search_locations[0] if s else '')"
    where = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip()
    path = Path(where) / "dataset_example" / "ml-100k" / "ml-100k.inter" if where else None
    if path is not None and path.is_file():
        raw = np.loadtxt(path, skiprows=1, dtype=np.int64)  # user, item, rating, timestamp
        users, u = np.unique(raw[:, 0], return_inverse=True)
        items, i = np.unique(raw[:, 1], return_inverse=True)
        return Interactions(u, i, len(users), len(items), timestamp=raw[:, 3]), "MovieLens-100k (RecBole 1.2.1 wheel)"
    rng = np.random.default_rng(seed)
    n_users, n_items, n = 943, 1682, 100_000
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    act = rng.pareto(1.5, n_users) + 1
    u = rng.choice(n_users, size=3 * n, p=act / act.sum())
    i = rng.choice(n_items, size=3 * n, p=pop / pop.sum())
    keys = np.unique(u * n_items + i)[: n]
    rng.shuffle(keys)
    u, i = keys // n_items, keys % n_items
    return Interactions(u, i, n_users, n_items, timestamp=np.arange(len(u))), "synthetic, ML-100k shape (seeded)"


def run_peer(python: str, workdir: Path, params: dict) -> tuple[float, dict[str, np.ndarray]]:
    out = workdir / f"peer_{params['model']}.npz"
    res = subprocess.run([python, str(PEER), str(workdir / "data.npz"), str(out), json.dumps(params)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"peer failed: {res.stderr[-2000:]}")
    fit_cpu = json.loads(res.stdout.strip().splitlines()[-1])["fit_cpu_s"]
    return fit_cpu, dict(np.load(out))


def run_ours(name: str, inter: Interactions, items: ItemSide | None, config: dict) -> tuple[float, object]:
    model = build_recommender(name, inter.n_users, inter.n_items, config)
    t0 = time.process_time()
    model.fit(inter, items)
    return time.process_time() - t0, model


def peer_model(name: str, inter: Interactions, items: ItemSide | None, factors: dict, config: dict):
    """An advrec model holding Cornac's learned factors (same scoring formula)."""
    model = build_recommender(name, inter.n_users, inter.n_items, {**config, "epochs": 1})
    model.setup(items, inter)
    with torch.no_grad():
        for key, value in factors.items():
            getattr(model, key).copy_(torch.from_numpy(value))
    return model


def accuracy(model, train: Interactions, test: Interactions) -> tuple[float, float]:
    _, acc = rank_and_evaluate(model, train, test, ks=(10,))
    return acc["hr@10"], acc["ndcg@10"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=Path(os.environ.get("ADVREC_BENCH_VENV", "/work/bench-venv")))
    p.add_argument("--setup-venv", action="store_true", help="create --venv with cornac (and the ML-100k file)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--models", default="bpr,vbpr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8192, help="advrec BPR-MF batch (Cornac's BPR is per sample)")
    p.add_argument("--lr", type=float, default=0.1, help="advrec BPR-MF Adagrad lr")
    p.add_argument("--peer-lr", type=float, default=0.1, help="Cornac BPR SGD lr")
    p.add_argument("--reg", type=float, default=0.001, help="L2 weight as Cornac applies it (lambda/2 ||x||^2 per sample); advrec gets lambda/2 on sum x^2")
    p.add_argument("--vbpr-batch", type=int, default=512)
    p.add_argument("--vbpr-lr", type=float, default=0.05, help="advrec VBPR Adagrad lr")
    p.add_argument("--peer-vbpr-lr", type=float, default=0.001, help="Cornac VBPR Adam lr")
    p.add_argument("--feature-dim", type=int, default=2048)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.setup_venv:
        setup_venv(args.venv)
    python = str(args.venv / "bin" / "python")
    data, source = load_data(python, args.seed)
    train, test = split_last(data)
    print(f"data: {source}; {data.n_users} users x {data.n_items} items, {len(train)} training pairs, "
          f"{len(test)} test users; {args.epochs} epochs, one thread, {args.repeats} interleaved repeats, CPU time")
    rng = np.random.default_rng(args.seed)
    feats = np.maximum(rng.normal(size=(data.n_items, args.feature_dim)), 0).astype(np.float32)
    feats /= np.abs(feats).max()
    items = ItemSide(features=torch.from_numpy(feats))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.savez(work / "data.npz", train_user=train.user, train_item=train.item, n_users=data.n_users,
                 n_items=data.n_items, features=feats)
        rows = []
        for which in args.models.split(","):
            if which == "bpr":
                ours_name, ours_items = "bprmf", None
                ours_cfg = {"k": args.k, "epochs": args.epochs, "batch_size": args.batch, "lr": [args.lr],
                            "regs": [args.reg / 2, args.reg / 2], "patience": 0, "seed": args.seed}
                peer_params = {"model": "bpr", "k": args.k, "epochs": args.epochs, "lr": args.peer_lr,
                               "reg": args.reg, "seed": args.seed}
                peer_as, peer_items = ("bprmf", {"k": args.k}), None
                label = f"BPR-MF k={args.k} (advrec batch {args.batch} Adagrad; Cornac per-sample SGD)"
            else:
                ours_name, ours_items = "vbpr", items
                ours_cfg = {"k": args.k, "epochs": args.epochs, "batch_size": args.vbpr_batch,
                            "lr": [args.vbpr_lr], "regs": [args.reg / 2, args.reg / 2, 0.0], "patience": 0, "seed": args.seed}
                half = args.k // 2
                peer_params = {"model": "vbpr", "k": half, "epochs": args.epochs, "lr": args.peer_vbpr_lr,
                               "reg": args.reg, "batch_size": args.vbpr_batch, "seed": args.seed}
                peer_as, peer_items = ("vbpr", {"k": half, "full_vbpr": True}), items
                label = (f"VBPR D={args.feature_dim} batch {args.vbpr_batch} (advrec study form k={args.k} Adagrad; "
                         f"Cornac k=k2={half} Adam)")
            ours_t, peer_t = [], []
            for _ in range(args.repeats):
                t, ours = run_ours(ours_name, train, ours_items, ours_cfg)
                ours_t.append(t / args.epochs)
                t, factors = run_peer(python, work, peer_params)
                peer_t.append(t / args.epochs)
            peer = peer_model(peer_as[0], train, peer_items, factors, peer_as[1])
            o, c = statistics.median(ours_t), statistics.median(peer_t)
            rows.append((label, o, c, accuracy(ours, train, test), accuracy(peer, train, test)))
    print(f"\n{'model':<78} {'advrec s/ep':>11} {'Cornac s/ep':>11} {'ratio':>6}  "
          f"{'HR@10 adv/Cor':>14}  {'nDCG@10 adv/Cor':>16}")
    for label, o, c, (hr_o, nd_o), (hr_c, nd_c) in rows:
        print(f"{label:<78} {o:>11.4f} {c:>11.4f} {o / c:>5.2f}x  {hr_o:>6.4f}/{hr_c:<7.4f}  {nd_o:>7.4f}/{nd_c:<8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
