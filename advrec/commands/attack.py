"""``advrec attack demo``: targeted attacks on the demo catalog against the three demo extractors.

For each extractor (standard, PGD-AT, Free-AT; trained or loaded by ``train_demo_extractor``),
the demo catalog's origin-category images are attacked toward the target category with every
method x eps, delivered (8-bit PNG by default) and measured. Results are artifacts in the store
(:func:`services.attacker.runner.attack_items`), so a second run only prints.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from advrec_common.errors import AdvrecError, InvalidInput, invalid

# ``--methods all``: every registered attack that needs no recommender (``score`` does)
ALL_METHODS = ("fgsm", "bim", "pgd", "mifgsm", "apgd", "cw", "square", "spsa", "feature_match")
DEFENSES = ("standard", "pgd_at", "free_at")


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("every eps must be > 0 (in 1/255 units)")
    return values


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("attack", help="Targeted adversarial attacks on product images.")
    sub = parser.add_subparsers(dest="attack_command", metavar="SUBCOMMAND")
    demo = sub.add_parser("demo", help="Attack the demo catalog's origin category against the demo extractors.")
    demo.add_argument("--methods", default="fgsm,pgd", help=f"Comma-separated, or 'all' = {','.join(ALL_METHODS)}.")
    demo.add_argument("--eps", type=_floats, default=[4.0, 8.0], help="Budgets in 1/255 units, e.g. 4,8.")
    demo.add_argument("--origin", default="sandal", help="Category whose items are attacked.")
    demo.add_argument("--target", default="sneaker", help="Category the attack pushes them toward.")
    demo.add_argument("--defenses", default=",".join(DEFENSES), help="Demo extractors to attack.")
    demo.add_argument("--delivery", choices=["png8", "png8_truncate", "float", "jpeg"], default="png8")
    demo.add_argument("--budget-space", choices=["pixel", "normalized"], default="pixel")
    demo.add_argument("--max-items", type=int, default=None, help="Attack at most this many origin items.")
    demo.add_argument("--store", default=None, help="Artifact store folder (default: the settings' store).")
    demo.add_argument("--device", default=None, help="cpu, cuda or auto (default: settings).")
    demo.add_argument("--batch-size", type=int, default=64)
    demo.set_defaults(func=run_demo)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def build_specs(methods: list[str], eps_list: list[float], budget_space: str) -> list[Any]:
    """The AttackSpecs of a demo run: the study's settings (C&W once, unbounded, as in the study).

    Every bad method or setting is listed in one InvalidInput."""
    specs, problems = _specs_and_problems(methods, eps_list, budget_space)
    if problems:
        raise invalid(problems, "invalid attack settings")
    return specs


def _specs_and_problems(methods: list[str], eps_list: list[float],
                        budget_space: str) -> tuple[list[Any], list[tuple[str, str]]]:
    from pydantic import ValidationError

    from services.attacker.spec import METHODS, AttackSpec, eps_unit_problem

    specs: list[Any] = []
    problems: list[tuple[str, str]] = [("--eps", why) for e in eps_list if (why := eps_unit_problem(e))]
    for m in methods:
        if m not in METHODS or m == "score":
            problems.append(("--methods", f"unknown or unsupported demo method {m!r}; choose from {list(ALL_METHODS)}"))
            continue
        if m == "cw":
            specs.append(AttackSpec(method="cw", eps=0, norm="l2"))
            continue
        space = budget_space if "normalized" in METHODS[m].budget_spaces else "pixel"
        for e in eps_list:
            try:
                specs.append(AttackSpec(method=m, eps=e, budget_space=space))
            except ValidationError as exc:
                problems += [("--eps", f"{m} at eps {e:g}: {err['msg'].removeprefix('Value error, ')}")
                             for err in exc.errors()]
    return specs, problems


def _argument_problems(args: argparse.Namespace, methods: list[str], defenses: list[str]) -> list[tuple[str, str]]:
    """Every mistake in the demo's arguments, found before anything is loaded or trained."""
    from advrec_common.datasets.demo_images import DEMO_CATEGORIES
    from services.attacker.spec import delivery_problem

    problems: list[tuple[str, str]] = []
    if not methods:
        problems.append(("--methods", "names no attack"))
    if unknown := [d for d in defenses if d not in DEFENSES]:
        problems.append(("--defenses", f"unknown defenses {unknown}; choose from {list(DEFENSES)}"))
    for flag, name in (("--origin", args.origin), ("--target", args.target)):
        if name not in DEMO_CATEGORIES:
            problems.append((flag, f"unknown category {name!r}; demo categories: {list(DEMO_CATEGORIES)}"))
    if args.origin == args.target:
        problems.append(("--target", "--origin and --target must differ"))
    if args.batch_size < 1:
        problems.append(("--batch-size", "must be >= 1"))
    if args.max_items is not None and args.max_items < 1:
        problems.append(("--max-items", "must be >= 1"))
    if problem := delivery_problem(args.budget_space, args.delivery):
        problems.append(("--budget-space", problem.replace("budget_space", "--budget-space")
                         .replace("delivery '", "--delivery '")))
    return problems


def _demo_parts() -> tuple[Any, Any]:
    try:
        from advrec_common.datasets.demo import DemoConfig, demo_catalog
        from services.extractor.demo_extractors import train_demo_extractor
    except ImportError as exc:
        raise AdvrecError(
            f"`advrec attack demo` needs the demo catalog and the demo extractors, which are not available ({exc})"
        ) from None
    return demo_catalog(DemoConfig()), train_demo_extractor


def _target_features(model: Any, images_u8: np.ndarray, batch_size: int) -> np.ndarray:
    """Clean features (M,D) of the target category's catalog images (feature_match's centroid)."""
    import torch

    x = torch.from_numpy(images_u8.astype(np.float32)).permute(0, 3, 1, 2) / 255.0
    model.eval()
    with torch.no_grad():
        dev = model.mean.device
        return torch.cat([model.features(x[i : i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)]).numpy()


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def run_demo(args: argparse.Namespace) -> int:
    from advrec_common.settings import get_settings, resolve_device
    from advrec_common.store import ArtifactStore
    from services.attacker.runner import attack_items, load_attack

    methods = list(ALL_METHODS) if args.methods.strip() == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    specs, spec_problems = _specs_and_problems(methods, args.eps, args.budget_space)
    if problems := _argument_problems(args, methods, defenses) + spec_problems:
        raise invalid(problems, "invalid arguments")  # all of them, before any training
    device = resolve_device(args.device or get_settings().device)
    catalog, train_demo_extractor = _demo_parts()
    cats = np.asarray(catalog.categories)
    idx = np.flatnonzero(cats == args.origin)[: args.max_items]
    tgt_idx = np.flatnonzero(cats == args.target)
    images, ids = catalog.images[idx], [catalog.item_ids[i] for i in idx]
    store = ArtifactStore(args.store or get_settings().store_dir)
    print(f"attacking {len(idx)} '{args.origin}' items toward '{args.target}' ({args.delivery} delivery, "
          f"{args.budget_space} budget, device {device})")
    header = (f"{'extractor':<9} {'method':<13} {'eps':>4} {'SR':>6} {'fSR':>6} {'SR0':>6} {'flip':>6} {'featMSE':>9} {'PSNR':>6} "
              f"{'SSIM':>6} {'Linf':>5} {'img/s':>7}")
    print(header)
    print("-" * len(header))
    for defense in defenses:
        model, _, model_key = train_demo_extractor(store, defense, device=device)
        if args.target not in model.class_names:
            raise InvalidInput(f"target {args.target!r} is not a class of the {defense} extractor")
        target = model.class_names.index(args.target)
        tf = _target_features(model, catalog.images[tgt_idx], args.batch_size)
        for spec in specs:
            key = attack_items(store, model, model_key, images, ids, spec, target, delivery=args.delivery,
                               device=device, batch_size=args.batch_size,
                               target_features=tf if spec.method == "feature_match" else None)
            s = load_attack(store, key).summary
            eps = "-" if spec.eps == 0 else f"{spec.eps:g}"
            print(f"{defense:<9} {spec.method:<13} {eps:>4} {_fmt(s['success_rate'], '6.1%')} "
                  f"{_fmt(s.get('float_success_rate'), '6.1%')} {_fmt(s.get('clean_target_rate'), '6.1%')} "
                  f"{s['flip_rate']:>6.1%} "
                  f"{s['feat_mse']:>9.2e} {_fmt(s['psnr_mean'], '6.1f')} {s['ssim_mean']:>6.3f} "
                  f"{s['linf_max_255']:>5.1f} {_fmt(s['images_per_s'], '7.1f')}")
    print("SR: share of the delivered images now classified as the target (fSR: of the attack's float output, "
          "before delivery; SR0: before the attack); flip: class changed; featMSE: clean vs adversarial features; "
          "PSNR/SSIM/Linf(1/255): delivered images; img/s: attack throughput when computed (cached runs repeat it)")
    return 0
