"""Images/s of each attack, and our normalised-space PGD against torchattacks' PGD on the same batch.

    .venv/bin/python benchmarks/attack_throughput.py [--backbone small_cnn] [--size 64] [--batch 32]
        [--device cpu|cuda] [--methods fgsm,pgd,...] [--eps 8] [--repeat 3] [--threads N]

The model is randomly initialised (throughput does not depend on the weights); every attack runs
``--repeat`` times after one warm-up and the best time is reported. C&W runs with the study's
5 x 1000 iterations unless ``--cw-steps`` says otherwise. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchattacks

from advrec_common.vision.backbones import build_model
from services.attacker.attacks import ATTACKS, run_attack
from services.attacker.attacks.projected_gradient import projected_gradient, targeted_ce
from services.attacker.spec import AttackSpec

DEFAULT_METHODS = "fgsm,bim,pgd,mifgsm,apgd,square,spsa,feature_match,cw"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best_time(fn, device: str, repeat: int) -> float:
    fn()  # warm-up (cuDNN autotune, lazy imports)
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _spec(method: str, eps: float, cw_steps: int) -> AttackSpec:
    if method == "cw":
        return AttackSpec(method="cw", eps=0, norm="l2", cw_steps=cw_steps)
    # black-box budgets kept small so the table finishes: Square 100 queries, SPSA 10 x 32 samples
    return AttackSpec(method=method, eps=eps, queries={"square": 100, "spsa": 32}.get(method),
                      steps=10 if method == "spsa" else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="small_cnn")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cw-steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_model(args.backbone, [f"c{i}" for i in range(args.classes)]).to(args.device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    target = torch.full((args.batch,), 1, device=args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}"
    print(f"{args.backbone} {args.size}x{args.size}, batch {args.batch}, eps {args.eps:g}/255, device {args.device} ({name})")
    print(f"{'attack':<24} {'seconds':>8} {'images/s':>9}")
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method not in ATTACKS:
            raise SystemExit(f"unknown attack {method!r}; known: {sorted(ATTACKS)}")
        spec = _spec(method, args.eps, args.cw_steps)
        kw = {"target_features": torch.zeros(model.feature_dim)} if method == "feature_match" else {}
        secs = _best_time(lambda s=spec, k=kw: run_attack(model, x, s, target, device=args.device,
                                                          batch_size=args.batch, **k), args.device, args.repeat)
        print(f"{spec.label():<24} {secs:>8.3f} {args.batch / secs:>9.1f}")

    # PGD-10, step eps/6, no random start: torchattacks (pixel) vs our engine in both spaces, same model/batch
    radius, step = args.eps / 255, args.eps / 255 / 6
    ref = torchattacks.PGD(model, eps=radius, alpha=step, steps=10, random_start=False)
    ref.set_mode_targeted_by_label(quiet=True)
    t_ref = _best_time(lambda: ref(x, target), args.device, args.repeat)

    def ours(space: str):
        return lambda: projected_gradient(model, x, target, targeted_ce, radius=radius, step=step, steps=10, space=space)

    t_pix = _best_time(ours("pixel"), args.device, args.repeat)
    t_norm = _best_time(ours("normalized"), args.device, args.repeat)
    print("\nPGD-10 on the same batch (ratio = our time / torchattacks' time; < 1 is faster)")
    print(f"{'torchattacks PGD (pixel)':<32} {t_ref:>8.3f} s {args.batch / t_ref:>9.1f} img/s")
    print(f"{'ours, pixel space':<32} {t_pix:>8.3f} s {args.batch / t_pix:>9.1f} img/s  ratio {t_pix / t_ref:.2f}x torchattacks")
    print(f"{'ours, normalised space (study)':<32} {t_norm:>8.3f} s {args.batch / t_norm:>9.1f} img/s  ratio {t_norm / t_ref:.2f}x torchattacks")


if __name__ == "__main__":
    main()
