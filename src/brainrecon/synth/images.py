"""Procedural stimulus scenes for the synthetic NSD: sampling, drawing, captions, low-level features.

A scene is a background (a named colour with a linear luminance gradient) and 1-3 objects of
distinct categories (:data:`CATEGORIES`), each with a named colour, a centre and a size. The
layout / luminance content (background colour, gradient, positions, sizes, colours) is drawn
independently of which categories are present, so low-level content and semantics vary
independently.

Images are RGB uint8 arrays of shape (S, S, 3); coordinates are in pixels with row 0 at the top.
"""

from __future__ import annotations

import numpy as np

#: object categories (names used in captions and in the planted semantic code)
CATEGORIES = ("ball", "box", "ring", "triangle", "bar", "cross")

#: object colours, RGB 0..255
OBJECT_COLOURS = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

#: background colours, RGB 0..255
BACKGROUND_COLOURS = {
    "grey": (128, 128, 128),
    "green": (90, 150, 90),
    "blue": (110, 150, 210),
    "beige": (220, 205, 170),
    "black": (30, 30, 35),
    "white": (235, 235, 235),
    "brown": (120, 85, 55),
}

#: side of the low-level feature grid (block means of the image, see :func:`lowlevel_features`)
LOWLEVEL_GRID = 8


def sample_scene(rng: np.random.Generator) -> dict:
    """Draw one scene description (JSON-serialisable).

    Returns ``{"background": name, "background_rgb": [r,g,b], "gradient": {"angle": rad,
    "strength": s}, "objects": [{"category", "colour", "cx", "cy", "size"}]}`` where ``cx, cy``
    are fractions of the image side (centre) and ``size`` the object's half-extent as a fraction
    of the side. Object categories within a scene are distinct.
    """
    bg_names = list(BACKGROUND_COLOURS)
    bg = bg_names[int(rng.integers(len(bg_names)))]
    # per-image jitter of the background colour
    base = np.clip(np.array(BACKGROUND_COLOURS[bg], float) + rng.normal(0, 12, 3), 0, 255)
    angle = float(rng.uniform(0, 2 * np.pi))
    strength = float(rng.uniform(-0.6, 0.6))
    n_obj = int(rng.integers(1, 4))
    cats = rng.choice(len(CATEGORIES), size=n_obj, replace=False)
    colour_names = [c for c in OBJECT_COLOURS if c != bg]
    objects = []
    for c in cats:
        objects.append(
            {
                "category": CATEGORIES[int(c)],
                "colour": colour_names[int(rng.integers(len(colour_names)))],
                "cx": float(rng.uniform(0.18, 0.82)),
                "cy": float(rng.uniform(0.18, 0.82)),
                "size": float(rng.uniform(0.08, 0.2)),
            }
        )
    objects.sort(key=lambda o: -o["size"])  # draw large objects first: less occlusion
    return {
        "background": bg,
        "background_rgb": [float(v) for v in base],
        "gradient": {"angle": angle, "strength": strength},
        "objects": objects,
    }


def _shape_mask(category: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of an object of half-extent ``r`` pixels; ``dx, dy`` offsets from its centre."""
    if category == "ball":
        return dx * dx + dy * dy <= r * r
    if category == "box":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if category == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if category == "triangle":
        # apex up at dy = -r, base at dy = +0.8 r
        return (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    if category == "bar":
        return (np.abs(dx) <= 1.2 * r) & (np.abs(dy) <= 0.35 * r)
    if category == "cross":
        return ((np.abs(dx) <= r) & (np.abs(dy) <= 0.3 * r)) | (
            (np.abs(dx) <= 0.3 * r) & (np.abs(dy) <= r)
        )
    raise ValueError(f"unknown synthetic object category {category!r}; known: {CATEGORIES}")


def draw_scene(scene: dict, size: int) -> np.ndarray:
    """Render a scene (from :func:`sample_scene`) as an RGB uint8 image of shape (size, size, 3)."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size  # 0..1
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    g = scene["gradient"]
    # projection on the gradient direction, in [-1, 1] over the image
    proj = ((xx - 0.5) * np.cos(g["angle"]) + (yy - 0.5) * np.sin(g["angle"])) * np.sqrt(2)
    shade = 1.0 + g["strength"] * proj
    img = np.asarray(scene["background_rgb"], float)[None, None, :] * shade[:, :, None]
    px = xx * size
    py = yy * size
    for obj in scene["objects"]:
        r = obj["size"] * size
        mask = _shape_mask(obj["category"], px - obj["cx"] * size, py - obj["cy"] * size, r)
        img[mask] = OBJECT_COLOURS[obj["colour"]]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def lowlevel_edges(size: int, grid: int = LOWLEVEL_GRID) -> np.ndarray:
    """Block edges of the low-level grid: ``(arange(grid+1) * size) // grid`` (pixels)."""
    return (np.arange(grid + 1) * size) // grid


def lowlevel_features(img: np.ndarray, grid: int = LOWLEVEL_GRID) -> np.ndarray:
    """Low-level content of an image: block means of RGB/255 on a ``grid``×``grid`` grid.

    ``img`` (S, S, 3) uint8 -> float64 (grid, grid, 3) in [0, 1]; block (i, j) averages rows
    ``edges[i]:edges[i+1]`` and columns ``edges[j]:edges[j+1]`` with :func:`lowlevel_edges`.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[0] != img.shape[1] or img.shape[2] != 3:
        raise ValueError(f"expected an (S, S, 3) image, got shape {img.shape}")
    edges = lowlevel_edges(img.shape[0], grid)
    x = img.astype(np.float64) / 255.0
    rows = np.add.reduceat(x, edges[:-1], axis=0)
    blocks = np.add.reduceat(rows, edges[:-1], axis=1)
    counts = np.diff(edges)
    return blocks / (counts[:, None, None] * counts[None, :, None])


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(colour: str | None, category: str) -> str:
    phrase = f"{colour} {category}" if colour else category
    return f"{_article(phrase)} {phrase}"


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


_NUMBERS = {1: "one", 2: "two", 3: "three"}


def captions(scene: dict, rng: np.random.Generator) -> list[str]:
    """Five COCO-style captions that name every object's category (and mostly its colour)."""
    objs = scene["objects"]
    bg = scene["background"]
    tone = "bright" if scene["background_rgb"] and np.mean(scene["background_rgb"]) > 150 else "dark"
    coloured = [_np(o["colour"], o["category"]) for o in objs]
    plain = [_np(None, o["category"]) for o in objs]
    order = rng.permutation(len(objs))
    shuffled = [coloured[i] for i in order]
    n = len(objs)
    noun = "object" if n == 1 else "objects"
    return [
        f"{_join(coloured)} on {_article(bg)} {bg} background",
        f"a picture of {_join(shuffled)}",
        f"{_NUMBERS[n]} {noun}, {_join(plain)}, in front of {_article(bg)} {bg} backdrop",
        f"a simple drawing showing {_join([plain[i] for i in order])}",
        f"there is {_join(coloured)} against a {tone} {bg} wall",
    ]
