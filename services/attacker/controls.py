"""The controls an attack is judged against: a placebo of the same size and an oracle that moves as
far as features can move.

* **Placebo** (:func:`placebo_images`): for every attacked image, the attack's *delivered*
  perturbation with its values shuffled over the image's pixels and channels (a seeded permutation
  per image and draw). It has exactly the attack's per-image value distribution — the same L-inf, L2
  and L1 size, the same number of changed values — in a random direction, and goes through the same
  delivery (8-bit values stay on the grid; JPEG is applied again). Clipping to [0,1] may shrink it
  slightly; its measured size is reported beside the attack's. An attack whose effect is no larger
  than its placebo's moved the recommender no more than noise of its size does.
* **Oracle** (:func:`oracle_rows`): every origin item takes the clean features of one *real* target
  item (a seeded draw that uses the target's items as evenly as possible) — a perfect visual disguise,
  what an attacker who could set the features directly would aim for. It keeps the target's spread:
  some disguises land on the target's best-scored items, and those reach users' top-K. Its effect
  bounds what moving the features can do (a positive control: if the oracle does not raise the
  category's exposure, no attack on the images can be expected to).
* **Centroid oracle** (:func:`centroid_rows`, control ``oracle_centroid``): every origin item takes the
  *mean* feature of the target's items. One vector scores like the target's average item, below any
  user's top-K tail, so it can miss a rise the real disguise shows; kept as its own control.
"""

from __future__ import annotations

import numpy as np

from advrec_common.errors import InvalidInput


def placebo_images(clean_u8: np.ndarray, delivered: np.ndarray, draws: int, seed: int, delivery: str = "png8",
                   jpeg_quality: int = 90, start: int = 0) -> np.ndarray:
    """clean_u8 (M,H,W,3) uint8, delivered (M,H,W,3) uint8 (or float32 in [0,1] for ``float``) ->
    (draws,M,H,W,3) placebo images of the same dtype as ``delivered``; draw r uses the random stream
    ``[seed, start + r]`` (``start`` lets a caller shuffle another perturbation per draw with the same streams)."""
    if clean_u8.shape != delivered.shape or clean_u8.ndim != 4 or clean_u8.dtype != np.uint8:
        raise InvalidInput(f"clean (M,H,W,3) uint8 and delivered must match, got {clean_u8.shape} {clean_u8.dtype} "
                           f"and {delivered.shape}")
    if draws < 1:
        raise InvalidInput(f"draws must be >= 1, got {draws}")
    as_float = delivered.dtype != np.uint8
    clean = clean_u8.astype(np.float32) / 255.0 if as_float else clean_u8.astype(np.int16)
    delta = (delivered.astype(np.float32) if as_float else delivered.astype(np.int16)) - clean
    m = clean_u8.shape[0]
    flat = delta.reshape(m, -1)
    out = np.empty((draws, *delivered.shape), dtype=delivered.dtype)
    for r in range(draws):
        rng = np.random.default_rng([seed, start + r])
        # one permutation per image: argsort of uniform keys, vectorised over images
        order = np.argsort(rng.random(flat.shape), axis=1, kind="stable")
        shuffled = np.take_along_axis(flat, order, axis=1).reshape(delta.shape)
        if as_float:
            out[r] = np.clip(clean + shuffled, 0.0, 1.0)
        else:
            out[r] = np.clip(clean + shuffled, 0, 255).astype(np.uint8)
    if delivery == "jpeg":
        from services.attacker.delivery import jpeg_roundtrip

        for r in range(draws):
            out[r] = jpeg_roundtrip(out[r], jpeg_quality)
    return out


def _members(categories: np.ndarray, origin: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    categories = np.asarray(categories)
    items, targets = np.flatnonzero(categories == origin), np.flatnonzero(categories == target)
    if targets.size == 0:
        raise InvalidInput(f"the target category (id {target}) has no items: the oracle has nothing to aim at")
    return items.astype(np.int64), targets.astype(np.int64)


def oracle_sources(categories: np.ndarray, origin: int, target: int, seed: int,
                   stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(origin items (M,), the target item whose features each takes (M,)): a seeded permutation of the
    target's items, repeated when the origin has more items, so every target item is used
    floor(M/T) or ceil(M/T) times and the disguises keep the target's spread. ``stream`` gives an
    independent draw of the same seed (the scenario's choice uses another draw than the evaluation)."""
    items, targets = _members(categories, origin, target)
    rng = np.random.default_rng([int(seed), int(origin), int(target), int(stream)])
    repeats = -(-items.size // targets.size) if items.size else 0
    order = np.concatenate([rng.permutation(targets) for _ in range(repeats)]) if repeats else targets[:0]
    return items, order[: items.size].astype(np.int64)


def oracle_rows(features: np.ndarray, categories: np.ndarray, origin: int, target: int,
                seed: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items (M,) of the origin category, rows (M,...) = the clean features of a real target item each,
    the source target items (M,)) — see :func:`oracle_sources`.

    ``features`` (I,...) clean features (pooled (I,D) or spatial (I,D',h,w)); ``categories`` (I,) ids.
    """
    items, sources = oracle_sources(categories, origin, target, seed, stream)
    return items, np.asarray(features[sources], dtype=np.float32).copy(), sources


def centroid_rows(features: np.ndarray, categories: np.ndarray, origin: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(items (M,) of the origin category, rows (M,...) all equal to the target category's mean feature)."""
    items, targets = _members(categories, origin, target)
    mean = np.asarray(features[targets], dtype=np.float64).mean(axis=0).astype(np.float32)
    return items, np.broadcast_to(mean, (items.size, *mean.shape)).copy()


def perturbation_size(clean_u8: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """Mean per-image L-inf and L2 (in 1/255 units) and the share of images changed at all."""
    c = clean_u8.astype(np.float32) / 255.0
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    d = (x - c).reshape(x.shape[0], -1)
    return {"linf_255": float(np.abs(d).max(axis=1).mean() * 255) if d.size else 0.0,
            "l2_255": float(np.linalg.norm(d, axis=1).mean() * 255) if d.size else 0.0,
            "changed": float((np.abs(d).max(axis=1) > 0).mean()) if d.size else 0.0}
