"""Procedural product photos for the demo: ten silhouettes x colours x patterns x pose x background.

Each product is drawn with Pillow at 4x resolution (for anti-aliasing) as an RGBA layer --
silhouette mask filled with a patterned texture, plus a few dark details per type (a watch face,
sneaker laces, a sock cuff) -- then rotated, shifted, downsampled and composited onto a light,
mildly noisy background. Silhouettes are defined in a unit box [-1, 1]^2 (y down).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from advrec_common.errors import InvalidInput

DEMO_CATEGORIES: list[str] = [
    "shirt", "trousers", "dress", "sneaker", "sandal", "bag", "hat", "watch", "glasses", "sock",
]  # fmt: skip

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40),
    "orange": (238, 128, 22),
    "yellow": (232, 196, 30),
    "green": (38, 140, 60),
    "blue": (30, 78, 200),
    "purple": (118, 48, 160),
    "black": (32, 32, 36),
    "pink": (236, 110, 168),
}
COLORS: list[str] = list(PALETTE)
PATTERNS: list[str] = ["plain", "stripes", "dots", "checks"]
BACKGROUNDS: list[tuple[int, int, int]] = [(246, 246, 242), (232, 236, 246), (246, 236, 226), (234, 244, 234)]
DETAIL = (22, 22, 26, 255)
SUPERSAMPLE = 4

Point = tuple[float, float]
Painter = Callable[[ImageDraw.ImageDraw, Callable[[float, float], Point], float], None]


def _poly(*pts: Point) -> list[Point]:
    return list(pts)


# Silhouettes: a painter draws the mask (fill=255) in unit coordinates mapped by `at`; `unit` is the
# pixel length of 1.0 so stroke widths scale with the product.
def _shirt(d: ImageDraw.ImageDraw, at, unit: float) -> None:
    d.polygon([at(x, y) for x, y in _poly(
        (-0.4, -0.75), (-0.15, -0.82), (0, -0.68), (0.15, -0.82), (0.4, -0.75), (0.88, -0.35), (0.66, -0.1),
        (0.4, -0.32), (0.4, 0.82), (-0.4, 0.82), (-0.4, -0.32), (-0.66, -0.1), (-0.88, -0.35))], fill=255)  # fmt: skip


def _trousers(d, at, unit) -> None:
    d.polygon([at(x, y) for x, y in _poly(
        (-0.45, -0.88), (0.45, -0.88), (0.56, 0.88), (0.14, 0.88), (0, -0.25), (-0.14, 0.88), (-0.56, 0.88))],
        fill=255)  # fmt: skip


def _dress(d, at, unit) -> None:
    d.polygon([at(x, y) for x, y in _poly(
        (-0.2, -0.88), (-0.1, -0.88), (0, -0.78), (0.1, -0.88), (0.2, -0.88), (0.3, -0.45), (0.16, -0.2),
        (0.72, 0.88), (-0.72, 0.88), (-0.16, -0.2), (-0.3, -0.45))], fill=255)  # fmt: skip


def _sneaker(d, at, unit) -> None:
    d.polygon([at(x, y) for x, y in _poly(
        (-0.88, 0.05), (-0.82, -0.3), (-0.45, -0.34), (-0.1, -0.05), (0.5, 0.04), (0.86, 0.22), (0.88, 0.45),
        (-0.88, 0.45))], fill=255)  # fmt: skip


def _sandal(d, at, unit) -> None:
    d.polygon([at(x, y) for x, y in _poly((-0.9, 0.3), (0.9, 0.25), (0.9, 0.45), (-0.9, 0.5))], fill=255)
    for cx in (-0.35, 0.35):
        x0, y0 = at(cx - 0.32, -0.15)
        x1, y1 = at(cx + 0.32, 0.75)
        d.arc([x0, y0, x1, y1], 180, 360, fill=255, width=max(1, int(0.14 * unit)))


def _bag(d, at, unit) -> None:
    d.polygon([at(x, y) for x, y in _poly((-0.6, -0.2), (0.6, -0.2), (0.78, 0.82), (-0.78, 0.82))], fill=255)
    x0, y0 = at(-0.38, -0.78)
    x1, y1 = at(0.38, 0.2)
    d.arc([x0, y0, x1, y1], 180, 360, fill=255, width=max(1, int(0.13 * unit)))


def _hat(d, at, unit) -> None:
    d.ellipse([*at(-0.92, 0.12), *at(0.92, 0.5)], fill=255)
    d.chord([*at(-0.5, -0.6), *at(0.5, 0.7)], 180, 360, fill=255)


def _watch(d, at, unit) -> None:
    d.rectangle([*at(-0.22, -0.95), *at(0.22, 0.95)], fill=255)
    d.ellipse([*at(-0.48, -0.48), *at(0.48, 0.48)], fill=255)


def _glasses(d, at, unit) -> None:
    width = max(1, int(0.13 * unit))
    for cx in (-0.46, 0.46):
        d.ellipse([*at(cx - 0.38, -0.32), *at(cx + 0.38, 0.32)], outline=255, width=width)
    d.line([at(-0.1, -0.05), at(0.1, -0.05)], fill=255, width=width)
    d.line([at(-0.84, -0.1), at(-0.98, -0.3)], fill=255, width=width)
    d.line([at(0.84, -0.1), at(0.98, -0.3)], fill=255, width=width)


def _sock(d, at, unit) -> None:
    d.polygon([at(x, y) for x, y in _poly(
        (-0.35, -0.88), (0.12, -0.88), (0.12, 0.18), (0.72, 0.3), (0.82, 0.55), (0.62, 0.82), (-0.22, 0.78),
        (-0.35, 0.5))], fill=255)  # fmt: skip


SILHOUETTES: dict[str, Painter] = {
    "shirt": _shirt, "trousers": _trousers, "dress": _dress, "sneaker": _sneaker, "sandal": _sandal,
    "bag": _bag, "hat": _hat, "watch": _watch, "glasses": _glasses, "sock": _sock,
}  # fmt: skip


def _details(category: str, d: ImageDraw.ImageDraw, at, unit: float) -> None:
    """Dark or light accents drawn over the textured silhouette (they make types easier to tell apart)."""
    w = max(1, int(0.05 * unit))
    if category == "watch":
        d.ellipse([*at(-0.36, -0.36), *at(0.36, 0.36)], fill=(245, 245, 240, 255), outline=DETAIL, width=w)
        d.line([at(0, 0), at(0, -0.28)], fill=DETAIL, width=w)
        d.line([at(0, 0), at(0.2, 0.05)], fill=DETAIL, width=w)
    elif category == "sneaker":
        d.polygon(
            [at(-0.88, 0.32), at(0.88, 0.32), at(0.88, 0.45), at(-0.88, 0.45)], fill=(245, 245, 245, 255)
        )
        for x in (-0.55, -0.42, -0.29):
            d.line([at(x, -0.22), at(x + 0.1, -0.08)], fill=DETAIL, width=w)
    elif category == "sock":
        d.rectangle([*at(-0.35, -0.88), *at(0.12, -0.7)], fill=(245, 245, 245, 255))
    elif category == "trousers":
        d.line([at(-0.45, -0.72), at(0.45, -0.72)], fill=DETAIL, width=w)
    elif category == "hat":
        d.line([at(-0.5, 0.12), at(0.5, 0.12)], fill=DETAIL, width=2 * w)


def _texture(size: int, color: str, pattern: str, rng: np.random.Generator) -> Image.Image:
    """(size,size) RGB fill: the colour, with a lighter shade drawn as stripes, dots or checks."""
    base = np.asarray(PALETTE[color], dtype=np.float64)
    shade = tuple(int(v) for v in np.round(base + 0.55 * (255.0 - base)))
    img = Image.new("RGB", (size, size), PALETTE[color])
    d = ImageDraw.Draw(img)
    period = int(size * rng.uniform(0.1, 0.16))
    phase = int(rng.integers(0, period))
    if pattern == "stripes":
        for x in range(-size + phase, 2 * size, period):
            d.polygon(
                [(x, 0), (x + period // 2, 0), (x + period // 2 + size // 3, size), (x + size // 3, size)],
                fill=shade,
            )
    elif pattern == "dots":
        r = period * 0.28
        for y in range(phase, size, period):
            for x in range(phase + (y // period % 2) * period // 2, size, period):
                d.ellipse([x - r, y - r, x + r, y + r], fill=shade)
    elif pattern == "checks":
        half = period // 2
        for y in range(0, size, half):
            for x in range((y // half % 2) * half, size, 2 * half):
                d.rectangle([x, y, x + half - 1, y + half - 1], fill=shade)
    elif pattern != "plain":
        raise InvalidInput(f"unknown pattern {pattern!r}; choose from {PATTERNS}")
    return img


def draw_product(
    category: str,
    rng: np.random.Generator,
    size: int = 64,
    color: str | None = None,
    pattern: str | None = None,
) -> tuple[np.ndarray, dict]:
    """One product photo: (size,size,3) uint8 and its attributes.

    attrs = {"category", "color", "pattern", "scale" (fraction of the frame, 0.62-0.9),
    "angle" (degrees, -25..25)}; colour and pattern are drawn from ``rng`` unless given.
    """
    if category not in SILHOUETTES:
        raise InvalidInput(f"unknown product type {category!r}; choose from {sorted(SILHOUETTES)}")
    if size < 16:
        raise InvalidInput(f"size must be at least 16 pixels, got {size}")
    color = COLORS[int(rng.integers(len(COLORS)))] if color is None else color
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))] if pattern is None else pattern
    if color not in PALETTE:
        raise InvalidInput(f"unknown colour {color!r}; choose from {COLORS}")
    scale = float(rng.uniform(0.62, 0.9))
    angle = float(rng.uniform(-25.0, 25.0))
    shift = rng.uniform(-0.07, 0.07, size=2) * size
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]

    big = size * SUPERSAMPLE
    unit = scale * big / 2.0

    def at(x: float, y: float) -> Point:
        return (big / 2.0 + x * unit, big / 2.0 + y * unit)

    mask = Image.new("L", (big, big), 0)
    SILHOUETTES[category](ImageDraw.Draw(mask), at, unit)
    layer = _texture(big, color, pattern, rng).convert("RGBA")
    layer.putalpha(mask)
    _details(category, ImageDraw.Draw(layer), at, unit)
    # Rotate at 2x (4x fewer pixels than the drawing; 2x still hides the bilinear blur), then box-reduce.
    layer = layer.reduce(SUPERSAMPLE // 2)
    layer = layer.rotate(
        angle, resample=Image.Resampling.BILINEAR, translate=(float(shift[0]) * 2, float(shift[1]) * 2)
    )
    layer = layer.reduce(2)

    noise = rng.normal(0.0, 3.0, size=(size, size, 3))
    bg = np.clip(np.asarray(background, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8)
    canvas = Image.alpha_composite(Image.fromarray(bg).convert("RGBA"), layer).convert("RGB")
    attrs = {"category": category, "color": color, "pattern": pattern, "scale": scale, "angle": angle}
    return np.asarray(canvas, dtype=np.uint8).copy(), attrs


def draw_products(
    categories: Sequence[str], rng: np.random.Generator, size: int = 64
) -> tuple[np.ndarray, list[dict]]:
    """Products of the given types in order: (N,size,size,3) uint8 and their attributes."""
    images = np.empty((len(categories), size, size, 3), dtype=np.uint8)
    attrs: list[dict] = []
    for n, category in enumerate(categories):
        images[n], a = draw_product(category, rng, size)
        attrs.append(a)
    return images, attrs


def make_product_images(
    n_per_class: int, size: int = 64, seed: int = 0, categories: Sequence[str] = DEMO_CATEGORIES
) -> tuple[np.ndarray, np.ndarray, list[str], list[dict]]:
    """A labelled training set for the demo extractors, drawn apart from the catalog.

    Returns images (N,size,size,3) uint8, labels (N,) int64 (index into the class names),
    the class names and per-image attributes; N = n_per_class * len(categories), classes
    interleaved. Uses the random stream ``[seed, 1]`` (the catalog uses ``[seed, 0]``).
    """
    if n_per_class <= 0:
        raise InvalidInput(f"n_per_class must be positive, got {n_per_class}")
    names = list(categories)
    labels = np.tile(np.arange(len(names), dtype=np.int64), n_per_class)
    images, attrs = draw_products([names[k] for k in labels], np.random.default_rng([seed, 1]), size)
    return images, labels, names, attrs
