"""The study at its real scale: per-step costs at Amazon Men's size and the projected time of the full grid.

    .venv/bin/python benchmarks/study_scale.py                 # this machine's CPU, one thread
    .venv/bin/python benchmarks/study_scale.py --device cuda   # a GPU (benchmarks/gpu.sh runs it)

Sizes: 24,379 users, 7,371 items, ~89k interactions (synthetic, seeded: ``make_interactions``),
2048-d features, ResNet50 at 224 px (random weights: the cost does not depend on their values).
Measured per unit (CPU-s on the CPU with one thread; wall seconds with synchronisation on a GPU):

* extraction: ResNet50 forward per image (batch 32);
* attack: PGD-10 per image (10 forward + backward of ResNet50, batch 8), FGSM per image;
* recommenders: one epoch of VBPR and AMR (study preset: batch 512, Adagrad), one evaluation
  (every user's top-100 + accuracy at 5..100, one pass).

The projection multiplies them by the `study` preset's grid: 3 extractors; FGSM and PGD at eps 4
and 8 and C&W (C&W: 5 x 1000 iterations) on the origin category's items (``--origin-share`` of the
catalog, 5 % by default); a placebo per attack cell (one extraction of the origin items per
replicate); the retrain scenario with R replicates of every VBPR / AMR model (clean, attacked,
placebo, oracle) at the study's 4000 epochs (AMR's second half adversarial). DVBPR and ACF are not
measured here (their costs are dominated by their own CNN / attention; see docs/recommender.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from services.recommender.metrics.accuracy import rank_and_evaluate
from services.recommender.models import build_recommender
from services.recommender.pairs import split_last
from services.recommender.synthetic import make_interactions

KS = (5, 10, 20, 50, 100)


def timer(device: str) -> Callable[[Callable[[], None]], float]:
    """CPU-s of fn on the CPU (robust to a busy machine); synchronised wall seconds on CUDA."""
    def measure(fn: Callable[[], None]) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return time.perf_counter() - t0
        t0 = time.process_time()
        fn()
        return time.process_time() - t0

    return measure


def image_costs(device: str, measure) -> dict[str, float]:
    """Seconds per image: extraction, FGSM, PGD-10 and one C&W iteration on ResNet50 at 224 px."""
    from advrec_common.vision.backbones import build_model
    from services.attacker.attacks import run_attack
    from services.attacker.spec import AttackSpec

    model = build_model("resnet50", [f"c{i}" for i in range(1000)]).eval().to(device)
    x = torch.rand(32, 3, 224, 224, device=device)
    with torch.inference_mode():
        model.features(x[:4])  # warm-up
        extract = measure(lambda: model.features(x)) / 32
    xa = torch.rand(8, 3, 224, 224)
    run_attack(model, xa[:2], AttackSpec(method="fgsm", eps=4), 3, device=device)  # warm-up
    fgsm = measure(lambda: run_attack(model, xa, AttackSpec(method="fgsm", eps=4), 3, device=device)) / 8
    pgd = measure(lambda: run_attack(model, xa, AttackSpec(method="pgd", eps=4, steps=10), 3, device=device)) / 8
    return {"extract": extract, "fgsm": fgsm, "pgd10": pgd, "grad_step": pgd / 10}


def recommender_costs(device: str, measure, epochs: int, unit: str) -> dict[str, dict[str, float]]:
    """Seconds of one epoch and one evaluation of VBPR and AMR; each printed as soon as it is measured."""
    inter, items = make_interactions(24_379, 7_371, 89_020, 2048, seed=0)
    train, test = split_last(inter)
    out = {}
    for name in ("vbpr", "amr"):
        cfg = {"preset": "study", "epochs": epochs, "patience": 0, "seed": 0, "device": device}
        if name == "amr":
            cfg["adv_start"] = 1 / epochs  # epochs >= 2 adversarial: measure AMR's dearer phase
        model = build_recommender(name, inter.n_users, inter.n_items, cfg)
        marks: list[float] = []
        clock = (lambda: (torch.cuda.synchronize(), time.perf_counter())[1]) if device.startswith("cuda") \
            else time.process_time
        marks.append(clock())
        model.fit(train, items, progress=lambda _r, m=marks, c=clock: m.append(c()))
        per_epoch = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
        epoch = statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else per_epoch[0]
        evaluation = measure(lambda m=model: rank_and_evaluate(m, train, test, KS, max_k=100))
        out[name] = {"epoch": epoch, "evaluation": evaluation}
        print(f"{name} at Amazon Men size ({unit}): epoch {epoch:.3f}, evaluation {evaluation:.3f}", flush=True)
    return out


def project(img: dict[str, float], rec: dict[str, dict[str, float]], replicates: int, origin_share: float,
            study_epochs: int = 4000) -> list[tuple[str, float]]:
    n_items, n_ext = 7_371, 3
    origin = origin_share * n_items
    cells = [("fgsm", 4), ("fgsm", 8), ("pgd", 4), ("pgd", 8), ("cw", 0)]
    per_image = {"fgsm": img["fgsm"], "pgd": img["pgd10"], "cw": 5 * 1000 * img["grad_step"]}
    rows = [("features (3 extractors x catalog)", n_ext * n_items * img["extract"]),
            ("attacks (3 x 5 cells x origin items)", n_ext * sum(per_image[m] for m, _ in cells) * origin),
            ("placebo extraction (R draws per cell)", n_ext * len(cells) * replicates * origin * img["extract"])]
    # models per extractor and recommender: 1 clean + (attack + placebo) per cell + 1 oracle, R each
    fits = n_ext * (1 + 2 * len(cells) + 1) * replicates
    evals = n_ext * (2 * len(cells) + 1) * replicates + n_ext * replicates
    for name, c in rec.items():
        epoch = c["epoch"]
        if name == "amr" and "vbpr" in rec:  # AMR's first half is plain VBPR, its second half adversarial
            epoch = (rec["vbpr"]["epoch"] + c["epoch"]) / 2
        rows.append((f"{name}: {fits} fits x {study_epochs} epochs", fits * study_epochs * epoch))
        rows.append((f"{name}: {evals} evaluations", evals * c["evaluation"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=3, help="epochs measured per recommender (median of epochs >= 2)")
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--origin-share", type=float, default=0.05, help="share of the catalog in the origin category")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    measure = timer(args.device)
    unit = "CPU-s, one thread" if args.device == "cpu" else "wall s"
    img = image_costs(args.device, measure)
    print(f"ResNet50 @224 on {args.device} ({unit} per image): extraction {img['extract']:.4f}, FGSM {img['fgsm']:.4f}, "
          f"PGD-10 {img['pgd10']:.4f}, one gradient step {img['grad_step']:.4f}", flush=True)
    rec = recommender_costs(args.device, measure, args.epochs, unit)
    rows = project(img, rec, args.replicates, args.origin_share)
    total = sum(v for _, v in rows)
    print(f"\nprojected `study` grid (R = {args.replicates}, origin = {args.origin_share:.0%} of the catalog) on "
          f"{args.device}:")
    for label, v in rows:
        print(f"  {label:<44} {v / 3600:>10.1f} h  ({100 * v / total:4.1f} %)")
    print(f"  {'total':<44} {total / 3600:>10.1f} h = {total / 86400:.1f} days"
          + (" of one core" if args.device == "cpu" else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
