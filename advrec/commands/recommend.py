"""``advrec recommend demo``: train visual recommenders on the demo catalog and show accuracy and exposure.

Features come from the standard demo extractor (``train_demo_extractor`` + ``extract_features``);
there is no fallback: without them the command fails with a clear message. Item categories are the
extractor's predicted classes, as in the study.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from advrec_common.errors import AdvrecError, InvalidInput, invalid


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("cut-offs must be positive integers")
    return values


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("recommend", help="Train and evaluate visual recommenders.")
    sub = parser.add_subparsers(dest="recommend_command", metavar="SUBCOMMAND")
    demo = sub.add_parser("demo", help="Train recommenders on the demo dataset with demo-extractor features.")
    demo.add_argument("--models", default="bprmf,vbpr,amr,deepstyle,acf,dvbpr",
                      help="Comma-separated recommenders (default: all).")
    demo.add_argument("--k", type=_int_list, default=[10, 20], help="Cut-offs, e.g. 10,20.")
    demo.add_argument("--store", default=None, help="Artifact store folder (default: the settings' store).")
    demo.add_argument("--epochs", type=int, default=None, help="Override every model's epoch budget.")
    demo.add_argument("--preset", choices=["fast", "study"], default="fast")
    demo.add_argument("--items", type=int, default=600)
    demo.add_argument("--users", type=int, default=800)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="cpu, cuda or auto (default: settings).")
    demo.add_argument("--threads", type=int, default=1,
                      help="torch CPU threads (default 1, as the pipeline trains: the fits depend on the count, "
                           "and 1 is fastest for these small models).")
    demo.set_defaults(func=run_demo)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _demo_inputs(args: argparse.Namespace, device: str):
    """(dataset, ItemSide, class names) from the demo dataset and the standard demo extractor."""
    import torch

    try:
        from advrec_common.datasets.demo import DemoConfig, make_demo_dataset
        from services.extractor.demo_extractors import train_demo_extractor
        from services.extractor.extraction import extract_features
    except ImportError as exc:
        raise AdvrecError(
            f"`advrec recommend demo` needs the demo dataset and the standard demo extractor, which are not "
            f"available ({exc}); there is no fallback"
        ) from None
    from advrec_common.settings import get_settings
    from advrec_common.store import ArtifactStore
    from services.recommender.items import ItemSide

    ds = make_demo_dataset(DemoConfig(n_items=args.items, n_users=args.users, image_size=64, seed=args.seed))
    store = ArtifactStore(args.store or get_settings().store_dir)
    extractor, _, key = train_demo_extractor(store, "standard", device=device)
    res = extract_features(extractor, ds.catalog.images, device=device, spatial=True)
    if res.spatial is None:
        raise AdvrecError("the demo extractor returned no spatial map (ACF needs it)")
    items = ItemSide.from_arrays(features=res.features, spatial_map=res.spatial, images_nhwc=ds.catalog.images,
                                 categories=torch.as_tensor(res.classes).long())
    print(f"dataset {ds.name}: {ds.n_users} users, {ds.n_items} items, {len(ds.train)} train / {len(ds.test)} test; "
          f"extractor {key[:12]} features {tuple(res.features.shape)} spatial {tuple(res.spatial.shape)}")
    return ds, items, list(extractor.class_names)


def _popularity_row(ds: Any, ks: list[int]) -> str:
    """The non-personalised reference: rank every user's candidates by training popularity."""
    import torch

    from services.recommender.metrics.accuracy import auc, hit_ratio, leave_one_out_ranks, n_candidates, ndcg
    from services.recommender.pairs import last_per_user
    from services.recommender.training import popularity_scores

    users, items = (torch.from_numpy(a) for a in last_per_user(ds.test))
    pop = torch.from_numpy(popularity_scores(ds.train))[None].expand(len(users), -1).clone()
    ranks = leave_one_out_ranks(pop, items, ds.train, users)
    a = float(auc(ranks, n_candidates(ds.train, users, items, ds.n_items)).mean())
    cells = " ".join(f"{float(hit_ratio(ranks, k).mean()):>7.3f} {float(ndcg(ranks, k).mean()):>8.3f}" for k in ks)
    return f"{'popularity':<10} {'-':>6} {'-':>5} {'-':>6} {a:>6.3f} {cells}"


def _argument_problems(args: argparse.Namespace, names: list[str]) -> list[tuple[str, str]]:
    """Every mistake in the demo's arguments, found before the extractor is trained or the data made."""
    from advrec_common.datasets.demo import DemoConfig
    from services.recommender.models import RECOMMENDERS

    problems: list[tuple[str, str]] = []
    if not names:
        problems.append(("--models", "names no recommender"))
    if unknown := [n for n in names if n not in RECOMMENDERS]:
        problems.append(("--models", f"unknown recommenders {unknown}; known: {', '.join(sorted(RECOMMENDERS))}"))
    for flag, value in (("--epochs", args.epochs), ("--threads", args.threads)):
        if value is not None and value < 1:
            problems.append((flag, f"must be >= 1, got {value}"))
    try:
        DemoConfig(n_items=args.items, n_users=args.users, image_size=64, seed=args.seed).validate()
    except InvalidInput as exc:
        flags = {"n_items": "--items", "n_users": "--users", "seed": "--seed", "interactions_per_user": "--items"}
        problems += [(flags.get(p["loc"], "--items"), p["msg"]) for p in exc.problems]
    if max(args.k) > args.items:
        problems.append(("--k", f"every cut-off must be <= the catalog's {args.items} items, got {max(args.k)}"))
    return problems


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from advrec_common.settings import get_settings, resolve_device
    from services.recommender.metrics.accuracy import evaluate_accuracy
    from services.recommender.metrics.category import chr_all_categories
    from services.recommender.models import build_recommender
    from services.recommender.scenario import propose_scenario
    from services.recommender.scoring import topk

    names = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    if problems := _argument_problems(args, names):
        raise invalid(problems, "invalid arguments")  # all of them, before any training
    device = resolve_device(args.device or get_settings().device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config: dict[str, Any] = {"preset": args.preset, "seed": args.seed, "device": device}
    if args.epochs is not None:
        config["epochs"] = args.epochs
    for name in names:  # the config each model reads is validated before any training
        build_recommender(name, 2, 2, config)
    ds, items, class_names = _demo_inputs(args, device)
    categories = items.categories
    n_cat = len(class_names)
    tops: dict[str, torch.Tensor] = {}
    print(f"\n{'model':<10} {'epochs':>6} {'best':>5} {'secs':>6} {'AUC':>6} "
          + " ".join(f"{'HR@' + str(k):>7} {'nDCG@' + str(k):>8}" for k in args.k))
    print(_popularity_row(ds, args.k))
    for name in names:
        model = build_recommender(name, ds.n_users, ds.n_items, config)
        t0 = time.perf_counter()
        report = model.fit(ds.train, items)
        secs = time.perf_counter() - t0
        acc = evaluate_accuracy(model, ds.train, ds.test, args.k)
        _, tops[name] = topk(model, None, max(args.k), exclude=ds.train)
        print(f"{name:<10} {report.epochs_run:>6} {report.best_epoch:>5} {secs:>6.1f} {acc['auc']:>6.3f} "
              + " ".join(f"{acc[f'hr@{k}']:>7.3f} {acc[f'ndcg@{k}']:>8.3f}" for k in args.k))
    present = sorted(set(categories.tolist()))
    width = max(len(class_names[c]) for c in present)
    for k in args.k:
        print(f"\nCHR@{k} (count form: mean number of category items per top-{k} list)")
        print(f"{'category':<{width}} {'items':>5} " + " ".join(f"{n:>9}" for n in names))
        table = {n: chr_all_categories(tops[n], categories, n_cat, k) for n in names}
        for c in present:
            print(f"{class_names[c]:<{width}} {int((categories == c).sum()):>5} "
                  + " ".join(f"{float(table[n][c]):>9.3f}" for n in names))
    base = "vbpr" if "vbpr" in tops else names[0]
    k0 = args.k[0]
    scen = propose_scenario(tops[base], categories, class_names, k0)
    o, t = scen["origin"], scen["target"]
    print(f"\nproposed scenario (from {base}, CHR@{k0}): origin {o['name']!r} (CHR {o['chr']:.3f}, {o['n_items']} items)"
          f" -> target {t['name']!r} (CHR {t['chr']:.3f}, {t['n_items']} items)")
    return 0
