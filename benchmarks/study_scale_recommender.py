"""Recommender CPU cost at the study's Amazon Men size: CPU-s per epoch of BPR-MF, VBPR, AMR and one full evaluation.

Run: ``.venv/bin/python benchmarks/study_scale_recommender.py [--epochs 2 --models bprmf,vbpr,amr]``

Data: ``services.recommender.synthetic.make_interactions`` with Amazon Men's shape (24,379 users,
7,371 items, ~89k interactions after de-duplication, 2048-d non-negative features), seeded;
leave-one-out split (each user's last row is the test item). Models use the study preset (Adagrad,
lr [0.01, 1e-4, 1e-3], batch 512 with drop_last, plain-sum regs, no early stopping); AMR's epoch is
one of its adversarial phase (``adv_start`` puts the switch after epoch 1). One thread, CPU time
(``time.process_time``) per epoch from the fit's progress callback; the median over epochs >= 2.

Evaluation = what one cell of the pipeline needs: every user's top-100 list plus HR/nDCG/AUC/
precision/recall at 5/10/20/50/100 of the test users. With ``rank_and_evaluate`` (this branch) that
is one pass; older code did ``topk`` + ``evaluate_accuracy`` (three passes), which the script uses
when ``rank_and_evaluate`` is missing, so the same script measures before and after. The reference
is a bare pass: per block of users, item-state matmul + ``torch.topk``, nothing else. Validation =
one early-stopping check (each user's last training item held out), exact or against 200 sampled items.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from services.recommender.models import build_recommender
from services.recommender.pairs import split_last
from services.recommender.synthetic import make_interactions

KS = (5, 10, 20, 50, 100)


def cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def full_evaluation(model, train, test) -> tuple[float, str]:
    try:
        from services.recommender.metrics.accuracy import rank_and_evaluate
    except ImportError:
        rank_and_evaluate = None
    if rank_and_evaluate is not None:
        return cpu(lambda: rank_and_evaluate(model, train, test, KS, max_k=100)), "one pass (rank_and_evaluate)"
    from services.recommender.metrics.accuracy import evaluate_accuracy
    from services.recommender.scoring import topk

    def three() -> None:
        topk(model, None, 100, exclude=train)
        evaluate_accuracy(model, train, test, KS)

    return cpu(three), "three passes (topk + evaluate_accuracy)"


def validation_cost(model, train, negatives: int) -> float | None:
    """CPU-s of one validation of the held-out last training item per user (what early stopping runs)."""
    from services.recommender import training

    fit_train, valid = split_last(train)
    config = model.config
    if negatives:
        if "val_negatives" not in type(config).model_fields:
            return None
        config = config.model_copy(update={"val_negatives": negatives})
    training.validation_metric(model, fit_train, valid, config)  # warm: the pair index is built once per fit
    return cpu(lambda: training.validation_metric(model, fit_train, valid, config))


def bare_pass(model, block: int) -> float:
    """Matmul + topk of every user against the item state (no masking, no metrics)."""
    state = model.item_state(None)
    vecs, bias = state if isinstance(state, tuple) else (state, None)
    users = model.P if not getattr(model.config, "full_vbpr", False) else torch.cat([model.P, model.theta], 1)

    def run() -> None:
        with torch.no_grad():
            for s in range(0, users.shape[0], block):
                scores = users[s : s + block] @ vecs.T
                if bias is not None:
                    scores += bias
                torch.topk(scores, 100, dim=1)

    return cpu(run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=24_379)
    p.add_argument("--items", type=int, default=7_371)
    p.add_argument("--interactions", type=int, default=89_020)
    p.add_argument("--feature-dim", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--models", default="bprmf,vbpr,amr")
    p.add_argument("--block", type=int, default=256, help="users per block of the bare pass")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    inter, items = make_interactions(args.users, args.items, args.interactions, args.feature_dim, seed=0)
    train, test = split_last(inter)
    print(f"synthetic Amazon Men shape: {inter.n_users} users x {inter.n_items} items, {len(inter)} interactions "
          f"({len(train)} train, {len(test)} test), {args.feature_dim}-d features; study preset, one thread, CPU-s")
    print(f"{'model':<8} {'epoch CPU-s':>12} {'eval CPU-s':>11} {'bare CPU-s':>11} {'eval/bare':>9} "
          f"{'val exact':>10} {'val N=200':>10}  evaluation")
    for name in args.models.split(","):
        cfg = {"preset": "study", "epochs": args.epochs, "patience": 0, "seed": 0}
        if name == "amr":
            cfg["adv_start"] = 1 / args.epochs  # epochs >= 2 are adversarial
        model = build_recommender(name, inter.n_users, inter.n_items, cfg)
        marks: list[float] = [time.process_time()]
        model.fit(train, items if name != "bprmf" else None, progress=lambda _r, m=marks: m.append(time.process_time()))
        per_epoch = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
        epoch = statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else per_epoch[0]
        eval_s, how = full_evaluation(model, train, test)
        bare = bare_pass(model, args.block)
        val = validation_cost(model, train, 0)
        val_s = validation_cost(model, train, 200)
        sampled = f"{val_s:>10.3f}" if val_s is not None else f"{'n/a':>10}"
        print(f"{name:<8} {epoch:>12.3f} {eval_s:>11.3f} {bare:>11.3f} {eval_s / bare:>8.2f}x {val:>10.3f} {sampled}  {how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
