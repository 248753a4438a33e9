"""Write a sample shop catalog in the generic layout, to follow docs/own-catalog.md without data of your own.

    python examples/own_catalog/make_sample.py shop/ [--items 60 --users 120 --size 256]

writes ``shop/images/<item>.png`` (RGBA PNGs, like product cut-outs), ``shop/interactions.csv``
(``customer;sku;bought_at`` -- semicolons, ISO timestamps, as a shop export might look) and
``shop/categories.csv`` (``sku,department``). The products are the demo's procedural drawings; their
departments (Apparel, Footwear, Accessories) are a shop's own labels: neither ImageNet classes nor
the demo extractor's. Deterministic for the same arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
from PIL import Image

DEPARTMENTS = {"shirt": "Apparel", "trousers": "Apparel", "dress": "Apparel", "sock": "Apparel",
               "sneaker": "Footwear", "sandal": "Footwear",
               "bag": "Accessories", "hat": "Accessories", "watch": "Accessories", "glasses": "Accessories"}


def write_sample_catalog(out: Path, n_items: int = 60, n_users: int = 120, image_size: int = 256,
                         seed: int = 0) -> dict[str, Path]:
    """Write the sample catalog into ``out`` (created); returns the paths a spec's dataset needs."""
    from advrec_common.datasets.demo import DemoConfig, make_demo_dataset

    ds = make_demo_dataset(DemoConfig(n_items=n_items, n_users=n_users, image_size=image_size, seed=seed,
                                      interactions_per_user=(6, 12)))
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    skus = [f"SKU{i:04d}" for i in range(len(ds.catalog))]
    assert ds.catalog.images is not None and ds.catalog.categories is not None
    for sku, img in zip(skus, ds.catalog.images, strict=True):
        rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
        Image.fromarray(rgba, mode="RGBA").save(images / f"{sku}.png")
    rows = ["customer;sku;bought_at"]
    for part in (ds.train, ds.test):
        assert part.timestamp is not None
        for u, i, t in zip(part.user, part.item, part.timestamp, strict=True):
            when = dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            rows.append(f"C{int(u):05d};{skus[int(i)]};{when}")
    (out / "interactions.csv").write_text("\n".join(rows) + "\n")
    (out / "categories.csv").write_text("sku,department\n" + "".join(
        f"{sku},{DEPARTMENTS[c]}\n" for sku, c in zip(skus, ds.catalog.categories, strict=True)))
    return {"images_dir": images, "interactions": out / "interactions.csv", "categories": out / "categories.csv"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = write_sample_catalog(args.out, args.items, args.users, args.size, args.seed)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
