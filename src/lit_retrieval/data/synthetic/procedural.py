"""Procedural objects and backgrounds: the embedded source, generated from a seed, no files shipped.

Objects are distinctive textured shapes (polygons, ellipses, stars, blobs) each with its own palette and
a two-pattern structured texture (stripes, checker, rings, waves, blobs), dots and an outline, so every
instance stays recognisable across pastes. Backgrounds are natural-ish textures: a gradient, smooth
multi-octave noise and random low-contrast shapes. Everything is vectorised numpy.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .objects import ObjectInstance, ObjectRef

SHAPES = ("polygon", "ellipse", "star", "blob")
PATTERNS = ("stripes", "checker", "rings", "waves", "blobs")
_OBJECT_TAG, _BACKGROUND_TAG = 0x0B1EC7, 0xBAC6


# ----------------------------------------------------------------------------------------------- helpers

def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (all in [0, 1]) to RGB float in [0, 1], shape ``h.shape + (3,)``."""
    h = np.asarray(h, dtype=np.float64) % 1.0
    s, v = np.asarray(s, dtype=np.float64), np.asarray(v, dtype=np.float64)
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _interp_axis(grid: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Smooth-step interpolate ``grid`` along ``axis`` from its nodes to ``n_out`` samples (gather, no BLAS)."""
    n_in = grid.shape[axis]
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    t = pos - i0
    t = t * t * (3.0 - 2.0 * t)
    shape = [1] * grid.ndim
    shape[axis] = n_out
    t = t.reshape(shape).astype(grid.dtype)
    g0 = np.take(grid, i0, axis=axis)
    out = np.take(grid, i0 + 1, axis=axis)
    out -= g0
    out *= t
    out += g0
    return out


def _noise_chw(rng: np.random.Generator, channels: int, height: int, width: int, octaves: int, base: int,
               persistence: float) -> np.ndarray:
    """(channels, height, width) float32 multi-octave value noise, about zero mean and unit std.

    Octaves are summed on a coarse-to-fine pyramid of node grids (each twice as fine), and only the
    finest grid is interpolated to full resolution. Channels first: numpy is slow on a tiny last axis.
    """
    gh = min(base + 1, max(height, 2))
    gw = min(max(2, round(gh * width / height)), max(width, 2))
    acc = rng.standard_normal((channels, gh, gw), dtype=np.float32)
    for o in range(1, octaves):
        gh2, gw2 = min(2 * gh - 1, max(height, 2)), min(2 * gw - 1, max(width, 2))
        acc = _interp_axis(_interp_axis(acc, gh2, 1), gw2, 2)
        acc += np.float32(persistence ** o) * rng.standard_normal((channels, gh2, gw2), dtype=np.float32)
        gh, gw = gh2, gw2
    acc -= acc.mean(axis=(1, 2), keepdims=True)
    acc /= acc.std(axis=(1, 2), keepdims=True) + np.float32(1e-6)
    return _interp_axis(_interp_axis(acc, height, 1), width, 2)


def smooth_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 5, base: int = 3,
                 persistence: float = 0.55, channels: int = 1) -> np.ndarray:
    """Multi-octave smooth value noise, (height, width, channels) float32, about zero mean and unit std."""
    return _noise_chw(rng, channels, height, width, octaves, base, persistence).transpose(1, 2, 0)


def _add_soft_shape(img: np.ndarray, rng: np.random.Generator) -> None:
    """Blend, in place into a (3, h, w) image, a random low-contrast soft ellipse or rotated rectangle
    (only its window is touched)."""
    height, width = img.shape[1:]
    r = rng.uniform(0.05, 0.3) * max(width, height)
    ry = r * rng.uniform(0.3, 1.0)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    is_ellipse = rng.random() < 0.6
    angle, edge = rng.uniform(0, np.pi), rng.uniform(1.5, 8)
    strength, shift = rng.uniform(0.2, 0.5), rng.uniform(-0.12, 0.12, size=3).astype(np.float32)
    ext = 1.5 * r + edge
    x0, x1 = max(0, int(cx - ext)), min(width, int(cx + ext) + 1)
    y0, y1 = max(0, int(cy - ext)), min(height, int(cy + ext) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u, v = xx * c + yy * s, yy * c - xx * s
    if is_ellipse:
        d = (np.sqrt((u / np.float32(r)) ** 2 + (v / np.float32(ry)) ** 2) - 1.0) * np.float32(min(r, ry))
    else:
        d = np.maximum(np.abs(u) - np.float32(r), np.abs(v) - np.float32(ry))
    cover = np.clip(0.5 - d / np.float32(edge), 0.0, 1.0) * np.float32(strength)
    img[:, y0:y1, x0:x1] += cover[None] * shift[:, None, None]


# ------------------------------------------------------------------------------------------ backgrounds

def procedural_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A natural-ish (height, width, 3) uint8 texture: gradient + multi-octave noise + low-contrast shapes."""
    hue = rng.random()
    c0 = hsv_to_rgb(hue, rng.uniform(0.1, 0.45), rng.uniform(0.35, 0.85)).astype(np.float32)[:, None, None]
    c1 = hsv_to_rgb(hue + rng.uniform(-0.12, 0.12), rng.uniform(0.1, 0.45),
                    rng.uniform(0.25, 0.8)).astype(np.float32)[:, None, None]
    a = rng.uniform(0, 2 * np.pi)
    t = np.arange(width, dtype=np.float32)[None, :] * np.float32(np.cos(a)) + \
        np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(a))
    t = (t - t.min()) / (np.ptp(t) + np.float32(1e-6))
    # one noise field: channel 0 modulates luminance, channels 1-3 tint the colour; plus film grain
    img = _noise_chw(rng, 4, height, width, octaves=5, base=int(rng.integers(2, 5)), persistence=0.55)
    lum, img = img[0], img[1:]  # (h, w), (3, h, w) views
    lum *= np.float32(rng.uniform(0.06, 0.14))
    lum += np.float32(0.04) * rng.random((height, width), dtype=np.float32) - np.float32(0.02)
    img *= np.float32(0.035)
    img += lum[None]
    img += c0
    img += (c1 - c0) * t[None]  # gradient; img is (3, h, w)
    for _ in range(int(rng.integers(4, 10))):
        _add_soft_shape(img, rng)
    img *= np.float32(255.0)
    img += np.float32(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 0))


class ProceduralBackgrounds:
    """``n`` procedural backgrounds; background ``i`` depends only on ``(seed, i)``.

    Args:
        n: number of backgrounds.
        seed: generation seed.
        long_side: (min, max) of the longer side in px; the shorter is 66-100% of it, either orientation.
    """

    def __init__(self, n: int, seed: int = 0, long_side: tuple[int, int] = (320, 480)) -> None:
        if n < 1:
            raise ValueError(f"ProceduralBackgrounds needs n >= 1, got {n}")
        self.n, self.seed, self.long_side = n, seed, long_side

    @property
    def keys(self) -> list[str]:
        return [f"procedural-bg:{self.seed}:{i:05d}" for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> np.ndarray:
        if not 0 <= index < self.n:
            raise IndexError(f"background {index} out of range [0, {self.n})")
        rng = np.random.default_rng([self.seed, _BACKGROUND_TAG, index])
        w, h = _random_canvas(rng, self.long_side)
        return procedural_background(rng, w, h)

    def describe(self) -> dict[str, Any]:
        return {"kind": "procedural", "n": self.n, "seed": self.seed, "long_side": list(self.long_side)}


def _random_canvas(rng: np.random.Generator, long_side: tuple[int, int]) -> tuple[int, int]:
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    short = int(round(long * rng.uniform(0.66, 1.0)))
    return (long, short) if rng.random() < 0.7 else (short, long)


# ---------------------------------------------------------------------------------------------- objects

def shape_outline(rng: np.random.Generator, kind: str) -> np.ndarray:
    """(N, 2) outline of a star-shaped ``kind`` shape around the origin (unit scale)."""
    if kind == "polygon":
        k = int(rng.integers(5, 10))
        theta = np.sort((np.arange(k) + rng.uniform(-0.35, 0.35, k)) * 2 * np.pi / k)
        r = rng.uniform(0.55, 1.0, k)
    elif kind == "star":
        k = int(rng.integers(5, 9))
        theta = np.arange(2 * k) * np.pi / k + rng.uniform(0, np.pi)
        r = np.where(np.arange(2 * k) % 2 == 0, 1.0, rng.uniform(0.4, 0.65))
    elif kind == "ellipse":
        theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        r = np.ones_like(theta)
    elif kind == "blob":
        theta = np.linspace(0, 2 * np.pi, 128, endpoint=False)
        r = 1.0 + sum(rng.uniform(0.03, 0.14) * np.cos(f * theta + rng.uniform(0, 2 * np.pi)) for f in (2, 3, 5))
    else:
        raise ValueError(f"unknown shape {kind!r}; choose one of {SHAPES}")
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def shape_mask(outline: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rasterise an outline stretched to touch all four sides of a (height, width) box."""
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    pts = (outline - lo) / (hi - lo) * np.array([width - 1, height - 1])
    im = Image.new("L", (width, height), 0)
    ImageDraw.Draw(im).polygon([tuple(p) for p in pts.round(2).tolist()], fill=1)
    return np.asarray(im).astype(bool)


def _palette(rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` saturated colours with well separated hues, (k, 3) in [0, 1]."""
    hues = rng.random() + np.cumsum(rng.uniform(0.18, 0.4, k))
    return hsv_to_rgb(hues, rng.uniform(0.55, 1.0, k), rng.uniform(0.45, 1.0, k))


def _pattern_index(rng: np.random.Generator, kind: str, xx: np.ndarray, yy: np.ndarray, k: int) -> np.ndarray:
    """Integer colour index per pixel for a pattern on normalised coordinates (object size ~ 1)."""
    a = rng.uniform(0, np.pi)
    u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
    period = rng.uniform(0.07, 0.2)
    if kind == "stripes":
        idx = np.floor(u / period)
    elif kind == "checker":
        idx = np.floor(u / period) + np.floor(v / (period * rng.uniform(0.7, 1.4)))
    elif kind == "rings":
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        idx = np.floor(np.hypot(xx - cx, yy - cy) / period)
    elif kind == "waves":
        idx = np.floor((u + rng.uniform(0.04, 0.1) * np.sin(2 * np.pi * v / rng.uniform(0.2, 0.5))) / period)
    elif kind == "blobs":
        n = smooth_noise(rng, xx.shape[0], xx.shape[1], octaves=2, base=int(rng.integers(2, 4)))[..., 0]
        return np.digitize(n, np.quantile(n, np.linspace(0, 1, k + 1)[1:-1]))
    else:
        raise ValueError(f"unknown pattern {kind!r}; choose one of {PATTERNS}")
    return idx.astype(np.int64) % k


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        e = out.copy()
        e[1:] &= out[:-1]
        e[:-1] &= out[1:]
        e[:, 1:] &= out[:, :-1]
        e[:, :-1] &= out[:, 1:]
        e[[0, -1]] = False
        e[:, [0, -1]] = False
        out = e
    return out


def render_object(rng: np.random.Generator, width: int, height: int, shape: str,
                  pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """A textured shape filling a (height, width) box: ``(rgb uint8, mask bool)``."""
    mask = shape_mask(shape_outline(rng, shape), width, height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) / max(width, height)
    xx, yy = xx - xx.mean(), yy - yy.mean()
    pal = _palette(rng, 5)
    k = int(rng.integers(2, 4))
    img = pal[_pattern_index(rng, pattern, xx, yy, k)]
    # a second pattern inside a disc or a band, with the remaining palette colours
    second = PATTERNS[(PATTERNS.index(pattern) + int(rng.integers(1, len(PATTERNS)))) % len(PATTERNS)]
    idx2 = _pattern_index(rng, second, xx, yy, 2) + k
    idx2 = np.minimum(idx2, len(pal) - 1)
    cx, cy, r = rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), rng.uniform(0.15, 0.3)
    region = (np.hypot(xx - cx, yy - cy) < r if rng.random() < 0.5
              else np.abs(xx * np.cos(r * 9) + yy * np.sin(r * 9) - cx) < r / 2)
    img = np.where(region[..., None], pal[idx2], img)
    for _ in range(int(rng.integers(3, 8))):  # dots
        dx, dy, dr = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.02, 0.05)
        dot = np.hypot(xx - dx, yy - dy) < dr
        img[dot] = pal[-1] * 0.35 if rng.random() < 0.5 else 1.0 - pal[-1] * 0.5
    outline = mask & ~_erode(mask, int(rng.integers(2, 4)))
    img[outline] = pal[0] * 0.3
    rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    rgb[~mask] = 0
    return rgb, mask


class ProceduralObjects:
    """``n`` procedural instances, each in its own source scene (its shape pasted on a procedural background).

    Instance ``i`` (shape, texture, scene) depends only on ``(seed, i)``, so sources of different ``n`` share
    their first instances. The layout is indexed up front; pixels are rendered on ``load``.

    Args:
        n: number of instances (= source scenes).
        seed: generation seed.
        object_size: (min, max) longer side of an instance, px.
        scene_size: (min, max) longer side of a source scene, px.
    """

    def __init__(self, n: int, seed: int = 0, object_size: tuple[int, int] = (128, 224),
                 scene_size: tuple[int, int] = (320, 480)) -> None:
        if n < 1:
            raise ValueError(f"ProceduralObjects needs n >= 1, got {n}")
        self.n, self.seed, self.object_size, self.scene_size = n, seed, object_size, scene_size
        self._layout = [self._plan(i) for i in range(n)]
        self._last: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None
        self.refs: tuple[ObjectRef, ...] = tuple(
            ObjectRef(i, i, f"procedural:{seed}:{i:05d}", f"{lay['shape']}/{lay['pattern']}",
                      (float(lay["x"]), float(lay["y"]), float(lay["x"] + lay["w"]), float(lay["y"] + lay["h"])))
            for i, lay in enumerate(self._layout)
        )

    def __len__(self) -> int:
        return self.n

    def _plan(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, _OBJECT_TAG, i, 0])
        sw, sh = _random_canvas(rng, self.scene_size)
        long = int(rng.integers(self.object_size[0], self.object_size[1] + 1))
        short = int(round(long * rng.uniform(0.65, 1.0)))
        w, h = (long, short) if rng.random() < 0.5 else (short, long)
        w, h = min(w, int(0.8 * sw)), min(h, int(0.8 * sh))
        x, y = int(rng.integers(0, sw - w + 1)), int(rng.integers(0, sh - h + 1))
        return {"scene": (sw, sh), "w": w, "h": h, "x": x, "y": y,
                "shape": SHAPES[int(rng.integers(len(SHAPES)))], "pattern": PATTERNS[int(rng.integers(len(PATTERNS)))]}

    def _render(self, ref: ObjectRef) -> tuple[np.ndarray, np.ndarray]:
        """(scene, mask) of an instance; the last one is cached (a query is read as scene, then object)."""
        if self._last is not None and self._last[0] == ref.image_id:
            scene, mask = self._last[1]
            return scene.copy(), mask
        lay = self._layout[ref.image_id]
        rgb, mask = render_object(np.random.default_rng([self.seed, _OBJECT_TAG, ref.image_id, 1]),
                                  lay["w"], lay["h"], lay["shape"], lay["pattern"])
        sw, sh = lay["scene"]
        scene = procedural_background(np.random.default_rng([self.seed, _OBJECT_TAG, ref.image_id, 2]), sw, sh)
        window = scene[lay["y"]:lay["y"] + lay["h"], lay["x"]:lay["x"] + lay["w"]]
        window[mask] = rgb[mask]
        self._last = (ref.image_id, (scene.copy(), mask))
        return scene, mask

    def source_image(self, ref: ObjectRef) -> np.ndarray:
        return self._render(ref)[0]

    def source_file(self, ref: ObjectRef) -> None:
        return None

    def load(self, ref: ObjectRef) -> ObjectInstance:
        scene, mask = self._render(ref)
        x1, y1, x2, y2 = ref.crop_box
        return ObjectInstance(ref, np.ascontiguousarray(scene[y1:y2, x1:x2]), mask)

    def describe(self) -> dict[str, Any]:
        return {"kind": "procedural", "n": self.n, "seed": self.seed,
                "object_size": list(self.object_size), "scene_size": list(self.scene_size)}
