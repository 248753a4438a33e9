"""Latency per uploaded image of the extractor service's screening route, per defense of the ladder.

    .venv/bin/python benchmarks/screening_latency.py [--requests 200] [--size 64] [--threads 2]

One image per request, sent one after the other to the extractor app in process (FastAPI's test
client: multipart parsing, decoding, resizing, the defense, the forward, the JSON answer; no network
hop), with ``/v1/extract`` (no defense) as the baseline. The extractor is the demo's backbone
(``tiny_cnn``, 64 px, 10 classes); the denoiser and the detector have their default sizes. Weights
are random: the time of a forward does not depend on them. Prints p50 / p95 / mean in milliseconds
and the share of the time spent in the domain (defense + forward); asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

from advrec_common.datasets.demo import DemoConfig, make_demo_dataset
from advrec_common.datasets.images import load_catalog_images
from advrec_common.settings import Settings, get_settings
from advrec_common.store import ArtifactStore
from advrec_common.vision.artifact import write_extractor_artifact
from advrec_common.vision.backbones import build_model
from advrec_common.vision.defenses.artifact import write_defense_artifact
from advrec_common.vision.defenses.registry import build_defense
from advrec_common.vision.defenses.spec import DefenseSpec
from services.extractor import app as extractor_app
from services.extractor.screening import screen_images

TRANSFORMS = [{"kind": "jpeg"}, {"kind": "bit_depth"}, {"kind": "median"}, {"kind": "resize_pad"}]
FITTED = [{"kind": "denoiser"}, {"kind": "detector"}]


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _percentiles(ms: list[float]) -> str:
    q = np.percentile(ms, [50, 95])
    return f"{q[0]:7.1f} {q[1]:7.1f} {statistics.fmean(ms):7.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="one-image requests per defense")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="advrec-screening-"))
    settings = Settings(home=home, device="cpu", internal_token="benchmark")
    store = ArtifactStore(settings.store_dir)
    ds = make_demo_dataset(DemoConfig(n_items=max(args.requests, 20), n_users=20, image_size=args.size))
    images = load_catalog_images(ds.catalog, list(range(args.requests)))
    uploads = [_png(im) for im in images]
    torch.manual_seed(0)
    model = build_model("tiny_cnn", sorted({c for c in ds.catalog.categories if c}), input_size=args.size).eval()
    extractor = "e" * 64
    with store.writing(extractor, {"kind": "extractor", "step": "benchmark"}) as out:
        write_extractor_artifact(out, model, source="benchmark")
    keys = {}
    for i, entry in enumerate(FITTED):
        spec = DefenseSpec(**entry)
        module = build_defense(spec)
        if spec.kind == "detector":
            module.threshold = 0.3
        keys[spec.label()] = f"{i + 1:x}" * 64
        with store.writing(keys[spec.label()], {"kind": "defense", "step": "benchmark"}) as out:
            write_defense_artifact(out, module, spec, extractor=extractor)

    app = extractor_app.create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    client = TestClient(app)
    client.headers["X-Internal-Token"] = "benchmark"  # what the gateway's proxy sends
    cases: list[tuple[str, str, dict[str, str], DefenseSpec | None]] = [("none (/v1/extract)", "/v1/extract", {}, None)]
    cases += [(DefenseSpec(**e).label(), "/v1/screen", {"spec": json.dumps(e)}, DefenseSpec(**e)) for e in TRANSFORMS]
    cases += [(label, "/v1/screen", {"defense": key}, DefenseSpec(**e)) for (label, key), e in zip(keys.items(), FITTED,
                                                                                                  strict=True)]
    print(f"one {args.size} px PNG per request, {args.requests} requests per row, {args.threads} torch threads; "
          "milliseconds per image")
    print(f"{'defense':24s} {'p50':>7s} {'p95':>7s} {'mean':>7s}   domain p50 (defense + forward)")
    for label, route, form, spec in cases:
        data = {"extractor": extractor, **form}
        client.post(route, data=data, files=[("images", ("warm.png", uploads[0], "image/png"))])  # warm-up
        wall = []
        for body in uploads:
            t0 = time.perf_counter()
            r = client.post(route, data=data, files=[("images", ("x.png", body, "image/png"))])
            wall.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
        domain = []
        if spec is not None:
            module = build_defense(spec)
            if spec.kind == "detector":
                module.threshold = 0.3
            for im in images[:50]:
                t0 = time.perf_counter()
                screen_images(model, module, im[None])
                domain.append((time.perf_counter() - t0) * 1000)
        print(f"{label:24s} {_percentiles(wall)}   {np.percentile(domain, 50):.1f}" if domain else
              f"{label:24s} {_percentiles(wall)}")


if __name__ == "__main__":
    main()
