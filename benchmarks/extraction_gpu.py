"""ResNet50 feature extraction throughput against the same device's bare forward peak.

    .venv/bin/python benchmarks/extraction_gpu.py --device cuda [--n 512 --batch 128]

Peak: a bare ``model(x)`` loop on a tensor already on the device (fp32 and, on CUDA, bf16 autocast
with channels_last), nothing else. advrec: ``extract_features`` on uint8 images in host memory (the
catalog path: host -> device copy, autocast, channels_last, features + classes + probabilities
back to the host). Prints images/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from advrec_common.vision.backbones import build_model
from services.extractor.extraction import extract_features


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    dev = args.device
    model = build_model("resnet50", [f"c{i}" for i in range(1000)]).eval().to(dev)
    images = np.random.default_rng(0).integers(0, 256, size=(args.n, args.size, args.size, 3), dtype=np.uint8)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)

    def bare(fmt: str) -> float:
        m, xx = model, x
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if fmt == "bf16" else torch.autocast("cpu", enabled=False)
        if fmt == "bf16":
            m = model.to(memory_format=torch.channels_last)
            xx = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), ctx:
            m(xx)
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(max(1, args.n // args.batch)):
                m(xx)
            _sync(dev)
        return max(1, args.n // args.batch) * args.batch / (time.perf_counter() - t0)

    peaks = {"fp32": bare("fp32")}
    if dev.startswith("cuda"):
        peaks["bf16 channels_last"] = bare("bf16")
    extract_features(model, images[: args.batch], batch_size=args.batch, device=dev)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    extract_features(model, images, batch_size=args.batch, device=dev)
    _sync(dev)
    ours = args.n / (time.perf_counter() - t0)
    best = max(peaks.values())
    print(f"ResNet50 @{args.size} on {dev}, batch {args.batch}, {args.n} images")
    for name, v in peaks.items():
        print(f"  bare forward peak ({name}): {v:9.1f} img/s")
    print(f"  advrec extract_features:         {ours:9.1f} img/s = {ours / best:.2f} of the best peak")


if __name__ == "__main__":
    main()
