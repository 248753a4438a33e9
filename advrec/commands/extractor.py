"""``advrec extractor``: train the demo extractors, extract study features, list named weights."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from advrec_common.errors import InvalidInput
from advrec_common.settings import get_settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("extractor", help="feature extractors: train demo defenses, extract, weights")
    sub = parser.add_subparsers(dest="extractor_command", metavar="ACTION", required=True)

    p = sub.add_parser("train-demo", help="train (or reuse) the demo extractors and print their robustness")
    p.add_argument("--defense", default="all", choices=["standard", "pgd_at", "free_at", "all"])
    p.add_argument("--store", type=Path, default=None, help="artifact store directory (default: settings)")
    p.add_argument("--n-per-class", type=int, default=None, help="training images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_train_demo)

    p = sub.add_parser("extract", help="write the study's features.npy + classes.csv for a folder of images")
    p.add_argument("--weights", required=True, help="checkpoint file, or a named weight (see 'weights')")
    p.add_argument("--backbone", default=None, help="backbone of the checkpoint (implied by a named weight)")
    p.add_argument("--layout", default="auto", help="checkpoint layout or 'auto'")
    p.add_argument("--images", type=Path, required=True, help="folder of <item_id>.<jpg|png|...> images")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--image-size", type=int, default=None,
                   help="bring every image to SIZE x SIZE (default: the model's own input size; 0: keep the "
                        "images' native size, which must then be the same for all)")
    p.add_argument("--image-fit", default="crop", choices=["crop", "pad", "stretch"],
                   help="how an image of another aspect reaches the square size (default crop: shorter side + "
                        "centre crop)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--spatial", action="store_true", help="also write spatial.npy (last feature map, for ACF)")
    p.set_defaults(func=_extract)

    p = sub.add_parser("weights", help="list named pretrained weights and whether they are on disk")
    p.add_argument("--weights-dir", type=Path, default=None, help="default: settings (ADVREC_WEIGHTS_DIR)")
    p.set_defaults(func=_weights)


def _train_demo(args: argparse.Namespace) -> int:
    from advrec_common.store import ArtifactStore
    from services.extractor.demo_extractors import (
        DEMO_DEFENSES,
        DEMO_N_PER_CLASS,
        demo_extractor_key,
        train_demo_extractor,
    )

    store = ArtifactStore(args.store if args.store is not None else get_settings().store_dir)
    n_per_class = args.n_per_class if args.n_per_class is not None else DEMO_N_PER_CLASS
    defenses = list(DEMO_DEFENSES) if args.defense == "all" else [args.defense]
    rows = []
    for defense in defenses:
        reused = store.has(demo_extractor_key(defense, n_per_class, args.seed))
        _, report, key = train_demo_extractor(store, defense, n_per_class=n_per_class, seed=args.seed, device=args.device)
        rows.append((defense, f"{report.clean_accuracy:.3f}", f"{report.robust_accuracy:.3f}",
                     f"{report.train_seconds:.1f}" + (" (stored)" if reused else ""), key[:16]))
    eps = DEMO_DEFENSES[defenses[0]].eval_eps
    steps = DEMO_DEFENSES[defenses[0]].eval_steps
    header = ("defense", "clean_acc", f"robust_acc(PGD-{steps},eps={eps:g}/255)", "train_s", "store_key")
    _print_table(header, rows)
    print(f"store: {store.root}")
    return 0


def _catalog_from_folder(folder: Path):
    """The catalog of an image folder (its existence was checked with the other flags)."""
    from advrec_common.datasets.types import Catalog

    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InvalidInput(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    numeric = all(p.stem.isdigit() for p in files)
    files.sort(key=lambda p: (int(p.stem), p.name) if numeric else (0, p.name))
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        raise InvalidInput(f"{folder} holds several images with the same item id (file stem)")
    return Catalog(item_ids=stems, image_paths=files)


def _check_extract_args(args: argparse.Namespace, named: set[str]) -> None:
    """InvalidInput listing every problem of ``advrec extractor extract``'s flags."""
    from advrec_common.errors import invalid
    from advrec_common.vision.backbones import BACKBONES

    problems = []
    if args.weights not in named:
        if not Path(args.weights).is_file():
            problems.append(("--weights", f"{args.weights!r} is neither a checkpoint file nor a named weight "
                                          "(`advrec extractor weights` lists them)"))
        if args.backbone is None:
            problems.append(("--backbone", "required with a checkpoint file"))
    if args.backbone is not None and args.backbone not in BACKBONES:
        problems.append(("--backbone", f"unknown backbone {args.backbone!r}; known: {', '.join(sorted(BACKBONES))}"))
    if not Path(args.images).is_dir():
        problems.append(("--images", f"image folder {str(args.images)!r} does not exist"))
    if args.image_size is not None and args.image_size < 0:
        problems.append(("--image-size", f"a positive side in pixels (or 0 for native), got {args.image_size}"))
    if problems:
        raise invalid(problems, "invalid arguments")


def _extract(args: argparse.Namespace) -> int:
    from services.extractor.extraction import extract_features, write_study_outputs
    from services.extractor.weights import NAMED_WEIGHTS, load_extractor, resolve_named_weights

    settings = get_settings()
    _check_extract_args(args, set(NAMED_WEIGHTS))  # every flag problem at once, before loading anything
    if args.weights in NAMED_WEIGHTS:
        model = resolve_named_weights(args.weights, settings.resolved_weights_dir)
    else:
        model = load_extractor(args.weights, args.backbone, layout=args.layout)
    catalog = _catalog_from_folder(args.images)
    size = model.input_size if args.image_size is None else (args.image_size or None)
    t0 = time.perf_counter()
    result = extract_features(model, catalog, batch_size=args.batch_size, device=args.device,
                              spatial=args.spatial, image_size=size, fit=args.image_fit)
    seconds = time.perf_counter() - t0
    out = write_study_outputs(result, model.class_names, catalog.item_ids, args.out)
    at = f"at {size}x{size} ({args.image_fit})" if size else "at native size"
    print(f"extracted {len(result)} images {at} with {model.backbone} in {seconds:.2f}s "
          f"({len(result) / max(seconds, 1e-9):.1f} img/s)")
    print(f"features.npy {result.features.shape} float32, classes.csv {len(result)} rows"
          + (f", spatial.npy {result.spatial.shape}" if result.spatial is not None else "") + f" -> {out}")
    return 0


def _weights(args: argparse.Namespace) -> int:
    from services.extractor.weights import NAMED_WEIGHTS, named_weight_status

    weights_dir = args.weights_dir if args.weights_dir is not None else get_settings().resolved_weights_dir
    rows = []
    for name, spec in NAMED_WEIGHTS.items():
        present, path = named_weight_status(name, weights_dir)
        rows.append((name, spec.defense, spec.layout, "present" if present else "MISSING", str(path)))
    _print_table(("name", "defense", "layout", "status", "expected path"), rows)
    missing = [row[0] for row in rows if row[3] == "MISSING"]
    if missing:
        print("sources of the missing files (advrec never downloads):")
        for name in missing:
            print(f"  {name}: {NAMED_WEIGHTS[name].source}")
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
