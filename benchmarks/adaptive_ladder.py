"""Each defense of the ladder against the non-adaptive and the adaptive attacker, at the domain level.

    .venv/bin/python benchmarks/adaptive_ladder.py [--items 120] [--eps 8] [--steps 10] [--store DIR]

The demo's standard extractor (trained once, or reused from ``--store``) and the demo catalog's
first ``--items`` images at 64 px; every defense at its default parameters, the denoiser and the
detector fitted on the whole catalog (seed 0). Attack: targeted PGD (L-inf, pixel budget ``--eps``/255,
``--steps`` steps, random start) from each image's class to the next class. Non-adaptive: PGD on the
bare extractor, the defense applied after; adaptive: the same PGD on the defended model
(``defend(..., adaptive=True)``: BPDA, EOT, end to end, detector-aware). Success = the deployed
defended model predicts the target (and, for the detector, the image is not flagged). Prints the
table and the time of each row; asserts nothing (this is the check that an adaptive attack never
does worse than the non-adaptive one; the evaluation pipeline measures the recommender's side).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from advrec_common.datasets.demo import DemoConfig, make_demo_dataset
from advrec_common.datasets.images import load_catalog_images
from advrec_common.store import ArtifactStore
from advrec_common.vision.defenses.defended import defend
from advrec_common.vision.defenses.spec import DEFENSE_KINDS, DefenseSpec
from services.attacker.attacks import run_attack
from services.attacker.spec import AttackSpec
from services.extractor.defense_fitting import fit_defense
from services.extractor.demo_extractors import train_demo_extractor
from services.extractor.fitting_data import to_tensor


def _success(model, defense, adv: torch.Tensor, target: torch.Tensor) -> float:
    s = defend(model, defense).screen(adv)
    ok = s.output.logits.argmax(1) == target
    if s.flagged is not None:
        ok &= ~s.flagged
    return float(ok.float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=120)
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--store", default=None, help="artifact store holding (or to hold) the demo extractor")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store = ArtifactStore(args.store or tempfile.mkdtemp(prefix="advrec-ladder-"))
    model, _, _ = train_demo_extractor(store, "standard")
    model.eval()
    catalog = load_catalog_images(make_demo_dataset(DemoConfig()).catalog, size=64)
    images = to_tensor(catalog[: args.items])
    with torch.no_grad():
        target = (model(images).argmax(1) + 1) % model.num_classes
    spec = AttackSpec(method="pgd", eps=args.eps, steps=args.steps)
    t0 = time.perf_counter()
    plain = run_attack(model, images, spec, target)
    with torch.no_grad():
        bare = float((model(plain).argmax(1) == target).float().mean())
    print(f"targeted PGD eps {args.eps:g}/255, {args.steps} steps, {args.items} demo images; "
          f"success on the bare extractor {bare:.2f} ({time.perf_counter() - t0:.0f} s)")
    print(f"{'defense':20s} {'gradient':8s} {'fit_s':>6s} {'non-adaptive':>12s} {'adaptive':>9s} {'attack_s':>8s}")
    for kind, info in DEFENSE_KINDS.items():
        d_spec = DefenseSpec(kind=kind)
        t0 = time.perf_counter()
        defense, _ = fit_defense(d_spec, catalog, model, seed=0)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        adaptive = run_attack(defend(model, defense, adaptive=True), images, spec, target)
        torch.manual_seed(0)
        row = (_success(model, defense, plain, target), _success(model, defense, adaptive, target))
        print(f"{d_spec.label():20s} {info.gradient:8s} {fit_s:6.0f} {row[0]:12.2f} {row[1]:9.2f} "
              f"{time.perf_counter() - t0:8.0f}", flush=True)


if __name__ == "__main__":
    main()
