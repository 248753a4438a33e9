"""Peak memory and time of extracting features from a catalog of 512x512 RGBA PNGs, by catalog size.

    .venv/bin/python benchmarks/catalog_memory.py [--items 66 264 1056] [--sizes 64 224 [native]] [--batch-size 64]
                                                  [--threads 1] [--workers 0] [--dir DIR] [--mmap-threshold BYTES]

The catalog is generated once (product-like drawings on a transparent background, 512x512 RGBA,
like the issue-11 catalog) and each (items, size) run is a fresh subprocess, so figures do not
leak between runs. Per run it prints the wall time of ``extract_features`` on a :class:`Catalog`
(streamed through ``iter_catalog_batches``) with a small CNN built here, the process's resident
memory before the extraction (torch + model), the peak during it (the kernel's high-water mark
``VmHWM``, reset through ``/proc/self/clear_refs`` just before), and the process's lifetime peak
(``ru_maxrss``). Flat memory means the peak does not grow with the catalog. It also times the
torch-free preflight check (``check_generic_dataset``, imports included) on the smallest catalog.

Allocator note: with glibc's default *dynamic* mmap threshold, freed multi-MiB buffers (decoded
images, batch tensors) stay in the heap and fragment it, so RSS creeps up over the first few
thousand images and then plateaus (about +90 MiB at size 64 here, measured over 8 passes of 1056
images); it is not a leak: with a fixed threshold (``--mmap-threshold 131072``, i.e.
``MALLOC_MMAP_THRESHOLD_``) the peak is flat from the first batch.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDE = 512


# -- the catalog -------------------------------------------------------------------------------------
def make_catalog(folder: Path, n_items: int, seed: int = 0) -> None:
    """``n_items`` 512x512 RGBA PNGs ``p0000.png`` ... plus ``interactions.csv`` (about 18 rows per item)
    and ``categories.csv``; files already there are kept."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n_items):
        path = images / f"p{i:04d}.png"
        colour = tuple(int(c) for c in rng.integers(30, 230, 3))
        if path.exists():
            continue
        img = Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0))
        draw = ImageDraw.Draw(img)
        box = [int(v) for v in rng.integers(40, 140, 2)] + [int(v) for v in rng.integers(370, 470, 2)]
        (draw.ellipse if i % 2 else draw.rounded_rectangle)(box, fill=(*colour, 255))
        draw.line([box[0], box[1], box[2], box[3]], fill=(255, 255, 255, 255), width=12)
        arr = np.asarray(img).copy()
        shade = rng.integers(-12, 13, (SIDE, SIDE, 1))  # texture, so the PNG is not trivially small
        arr[..., :3] = np.clip(arr[..., :3].astype(np.int16) + shade, 0, 255).astype(np.uint8)
        Image.fromarray(arr, "RGBA").save(path, compress_level=1)
    n_rows = n_items * 1176 // 66  # the ratio: 1,176 rows for 66 items
    users = rng.integers(0, max(2, n_items * 2), n_rows)
    items = rng.integers(0, n_items, n_rows)
    (folder / "interactions.csv").write_text(
        "user_id;product_id;ts\n" + "".join(f"u{u};p{i:04d};{1_700_000_000_000 + 1000 * t}\n"
                                           for t, (u, i) in enumerate(zip(users, items, strict=True))))
    (folder / "categories.csv").write_text("item,category\n" + "".join(f"p{i:04d},c{i % 7}\n" for i in range(n_items)))


# -- one run (in a subprocess) -----------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def run_one(folder: Path, n_items: int, size: int | None, batch_size: int, threads: int, workers: int) -> dict:
    import torch
    from torch import nn

    from advrec_common.datasets.types import Catalog
    from services.extractor.extraction import extract_features

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class SmallCNN(nn.Module):
        """Three strided convs + global average pool: features (B,128), logits (B,10)."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
            )
            self.head = nn.Linear(128, 10)

        def forward_all(self, x: torch.Tensor, spatial: bool = False):
            fmap = self.body(x)
            feats = fmap.mean(dim=(2, 3))
            return type("Out", (), {"features": feats, "logits": self.head(feats),
                                    "spatial": fmap if spatial else None})

    paths = sorted((folder / "images").glob("*.png"))[:n_items]
    catalog = Catalog(item_ids=[p.stem for p in paths], image_paths=paths)
    model = SmallCNN().eval()
    extract_features(model, catalog.subset([0]), image_size=size, device="cpu")  # warm-up: kernels, allocator
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    res = extract_features(model, catalog, image_size=size, batch_size=batch_size, device="cpu", num_workers=workers)
    seconds = time.perf_counter() - t0
    return {
        "items": n_items, "size": size, "seconds": seconds, "rss_before_mib": before / 1024,
        "peak_mib": _status_kib("VmHWM") / 1024, "lifetime_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "features": list(res.features.shape),
    }


def time_preflight(folder: Path) -> dict:
    t0 = time.perf_counter()
    from advrec_common.datasets.generic_layout import InteractionColumns
    from advrec_common.datasets.preflight import check_generic_dataset

    t_import = time.perf_counter() - t0
    report = check_generic_dataset(folder / "images", folder / "interactions.csv", folder / "categories.csv",
                                   InteractionColumns(user="user_id", item="product_id", timestamp="ts"),
                                   require_uniform_size=True)
    return {"import_s": t_import, "check_s": report.seconds, "total_s": time.perf_counter() - t0,
            "torch_imported": "torch" in sys.modules, "rows": report.rows, "items": report.items,
            "image_sizes": report.image_sizes, "image_modes": report.image_modes,
            "problems": [str(p) for p in report.problems]}


def _child(args: list[str], mmap_threshold: int | None = None) -> dict:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    out = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[66, 264, 1056])
    ap.add_argument("--sizes", nargs="+", default=["64", "224"], help="pixels, or 'native' (no resizing)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--workers", type=int, default=0, help="decoding threads (extract_features num_workers)")
    ap.add_argument("--dir", default=None, help="where to generate the catalog (default: a temporary folder)")
    ap.add_argument("--mmap-threshold", type=int, default=None, help="set MALLOC_MMAP_THRESHOLD_ in the runs")
    ap.add_argument("--_run", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--_preflight", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        folder, n, size, bs, th, wk = args._run
        print(json.dumps(run_one(Path(folder), int(n), None if size == "native" else int(size), int(bs), int(th), int(wk))))
        return
    if args._preflight:
        print(json.dumps(time_preflight(Path(args._preflight))))
        return

    base = Path(args.dir or tempfile.mkdtemp(prefix="advrec-catalog-"))
    t0 = time.perf_counter()
    make_catalog(base / "full", max(args.items))
    small = base / f"small{min(args.items)}"
    make_catalog(small, min(args.items))
    print(f"catalog: {max(args.items)} RGBA {SIDE}x{SIDE} PNGs in {base} "
          f"({sum(p.stat().st_size for p in (base / 'full' / 'images').iterdir()) / 2**20:.0f} MiB, "
          f"generated in {time.perf_counter() - t0:.0f} s)")

    pf = _child(["--_preflight", str(small)])
    print(f"preflight check_generic_dataset, {pf['items']} items / {pf['rows']} rows: {pf['total_s']:.2f} s in a fresh "
          f"process (imports {pf['import_s']:.2f} s, check {pf['check_s']:.2f} s), torch imported: {pf['torch_imported']}, "
          f"sizes {pf['image_sizes']}, modes {pf['image_modes']}, problems: {len(pf['problems'])}")

    print(f"\nextract_features(Catalog), small CNN, batch {args.batch_size}, {args.threads} torch thread(s), "
          f"{args.workers} decode worker(s), MALLOC_MMAP_THRESHOLD_={args.mmap_threshold or 'glibc default'}")
    print(f"{'items':>6} {'size':>6} {'seconds':>8} {'img/s':>7} {'RSS before':>11} {'peak':>8} {'peak-before':>12} "
          f"{'lifetime peak':>14}")
    rows = []
    for size in args.sizes:
        for n in args.items:
            r = _child(["--_run", str(base / "full"), str(n), str(size), str(args.batch_size), str(args.threads),
                        str(args.workers)], args.mmap_threshold)
            rows.append(r)
            print(f"{n:>6} {size:>6} {r['seconds']:>8.2f} {n / r['seconds']:>7.1f} {r['rss_before_mib']:>8.0f} MiB "
                  f"{r['peak_mib']:>4.0f} MiB {r['peak_mib'] - r['rss_before_mib']:>8.0f} MiB {r['lifetime_peak_mib']:>10.0f} MiB")
    for size in args.sizes:
        sub = [r for r in rows if r["size"] == (None if size == "native" else int(size))]
        growth = [r["peak_mib"] - r["rss_before_mib"] for r in sub]
        print(f"size {size}: peak growth over the extraction {min(growth):.0f}..{max(growth):.0f} MiB for "
              f"{sub[0]['items']}..{sub[-1]['items']} items (x{sub[-1]['items'] / sub[0]['items']:.0f} items, "
              f"x{max(growth) / max(min(growth), 1e-9):.2f} memory)")


if __name__ == "__main__":
    main()
