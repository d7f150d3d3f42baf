"""The paste: put a segmented object on a background with geometric and photometric changes.

``paste`` samples a concrete ``PasteTransform`` from ``PasteParams`` ranges (deterministic given the
numpy Generator) and applies it with ``compose``; ``compose`` alone replays a recorded transform. Order:
horizontal flip, resize (``scale`` of the canvas side), photometric jitter of the object pixels
(brightness, contrast, saturation, hue), rotation with expand, placement (possibly partly outside the
canvas), alpha blending with the (optionally feathered) mask.

The returned box is ``[x1, y1, x2, y2]`` in output pixels, clipped to the canvas, with ``x2``/``y2``
exclusive (PIL crop convention): ``image.crop(box)`` is exactly the visible object's extent.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .objects import ObjectInstance

Box = list[int]


@dataclass(frozen=True)
class PasteParams:
    """Ranges a paste is sampled from.

    Attributes:
        scale: (min, max) fraction of the canvas the object's box spans along its most constrained side
            (before rotation): 0.5 means the box is half the canvas wide or half as high, whichever binds.
        rotation: (min, max) absolute rotation in degrees; the sign is random.
        flip_prob: probability of a horizontal flip.
        brightness, contrast, saturation: (min, max) multiplicative factors (1 = unchanged).
        hue: (min, max) absolute hue shift as a fraction of the colour wheel; the sign is random.
        truncation_prob: probability of placing the object partly outside the canvas.
        visible: (min, max) target fraction of the object's pixels kept inside the canvas when truncated.
        feather: Gaussian blur radius (px) of the alpha edge; 0 = hard edge.
    """

    scale: tuple[float, float] = (0.25, 0.5)
    rotation: tuple[float, float] = (0.0, 10.0)
    flip_prob: float = 0.5
    brightness: tuple[float, float] = (0.85, 1.15)
    contrast: tuple[float, float] = (0.85, 1.15)
    saturation: tuple[float, float] = (0.85, 1.15)
    hue: tuple[float, float] = (0.0, 0.02)
    truncation_prob: float = 0.0
    visible: tuple[float, float] = (1.0, 1.0)
    feather: float = 0.8

    def __post_init__(self) -> None:
        for name in ("scale", "rotation", "brightness", "contrast", "saturation", "hue", "visible"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"PasteParams.{name} must be (min, max) with min <= max, got {(lo, hi)}")
        if not (0 < self.scale[0] and self.scale[1] <= 1.5):
            raise ValueError(f"PasteParams.scale must lie in (0, 1.5], got {self.scale}")
        if not (0 < self.visible[0] and self.visible[1] <= 1):
            raise ValueError(f"PasteParams.visible must lie in (0, 1], got {self.visible}")


PRESETS: dict[str, PasteParams] = {
    # large, mild rotation and jitter, never truncated
    "easy": PasteParams(scale=(0.25, 0.5), rotation=(0.0, 10.0)),
    # small, rotated, recoloured; mild truncation allowed
    "hard": PasteParams(scale=(0.1, 0.25), rotation=(15.0, 60.0), brightness=(0.7, 1.3), contrast=(0.7, 1.3),
                        saturation=(0.4, 1.6), hue=(0.08, 0.25), truncation_prob=0.3, visible=(0.75, 0.95)),
    # mostly cut off: under 40% of the object is visible
    "junk": PasteParams(scale=(0.2, 0.45), rotation=(0.0, 30.0), brightness=(0.8, 1.2), contrast=(0.8, 1.2),
                        saturation=(0.7, 1.3), hue=(0.0, 0.05), truncation_prob=1.0, visible=(0.12, 0.35)),
    # other objects in distractor images: medium size, any look, whole
    "distractor": PasteParams(scale=(0.15, 0.4), rotation=(0.0, 30.0), brightness=(0.8, 1.2), contrast=(0.8, 1.2),
                              saturation=(0.7, 1.3), hue=(0.0, 0.05)),
}


@dataclass(frozen=True)
class PasteTransform:
    """A concrete paste. ``width``/``height``: object size after resize (before rotation); ``x``/``y``:
    canvas position of the top-left corner of the rotated object's tight box (may be negative)."""

    width: int
    height: int
    angle: float
    flip: bool
    brightness: float
    contrast: float
    saturation: float
    hue: float
    x: int
    y: int
    feather: float


def jitter_colors(rgb: np.ndarray, mask: np.ndarray, brightness: float, contrast: float, saturation: float,
                  hue: float) -> np.ndarray:
    """Photometric jitter of (h, w, 3) uint8 pixels; the contrast pivot is the mean grey of the masked pixels."""
    x = rgb.astype(np.float32)
    x *= np.float32(brightness)
    grey = x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587) + x[..., 2] * np.float32(0.114)
    pivot = grey[mask].mean() if mask.any() else grey.mean()
    x = (x - pivot) * np.float32(contrast) + pivot
    grey = (grey - pivot) * np.float32(contrast) + pivot
    x = grey[..., None] + (x - grey[..., None]) * np.float32(saturation)
    out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    if hue:
        hsv = np.array(Image.fromarray(out).convert("HSV"))
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(hue * 256)) % 256
        out = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    return out


def _geometry(obj: ObjectInstance, t: PasteTransform) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip, resize, jitter and rotate the object: (rgb uint8, alpha float32 in [0, 1], binary mask),
    cropped to the tight box of the binary mask (alpha >= 0.5)."""
    rgb, mask = obj.rgb, obj.mask
    if t.flip:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    rgb_im = Image.fromarray(np.ascontiguousarray(rgb)).resize((t.width, t.height), Image.Resampling.BICUBIC)
    alpha_im = Image.fromarray(np.ascontiguousarray(mask).astype(np.uint8) * 255).resize((t.width, t.height),
                                                                                         Image.Resampling.BILINEAR)
    small_mask = np.asarray(alpha_im) >= 128
    rgb_im = Image.fromarray(jitter_colors(np.asarray(rgb_im), small_mask, t.brightness, t.contrast, t.saturation,
                                           t.hue))
    if t.angle:
        rgb_im = rgb_im.rotate(t.angle, resample=Image.Resampling.BICUBIC, expand=True)
        alpha_im = alpha_im.rotate(t.angle, resample=Image.Resampling.BILINEAR, expand=True)
    alpha = np.asarray(alpha_im, dtype=np.float32) / 255.0
    binary = alpha >= 0.5
    if not binary.any():
        raise ValueError(f"object {obj.ann_id} from {obj.source_path} vanishes at {t.width}x{t.height} px; paste it "
                         "larger")
    rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return np.asarray(rgb_im)[sl], alpha[sl], binary[sl]


def compose(background: np.ndarray, obj: ObjectInstance,
            t: PasteTransform) -> tuple[np.ndarray, Box | None, dict[str, Any]]:
    """Apply a concrete transform: ``(image, box or None if nothing is visible, info)``."""
    rgb, alpha, binary = _geometry(obj, t)
    return _blend(background, rgb, alpha, binary, t)


def _blend(background: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, binary: np.ndarray,
           t: PasteTransform) -> tuple[np.ndarray, Box | None, dict[str, Any]]:
    if background.ndim != 3 or background.shape[2] != 3 or background.dtype != np.uint8:
        raise ValueError(f"background must be (h, w, 3) uint8 RGB, got {background.shape} {background.dtype}")
    H, W = background.shape[:2]
    h, w = binary.shape
    pad = int(np.ceil(2 * t.feather)) + 1 if t.feather > 0 else 0
    if pad:
        a_im = Image.fromarray((np.pad(alpha, pad) * 255 + 0.5).astype(np.uint8))
        alpha = np.asarray(a_im.filter(ImageFilter.GaussianBlur(t.feather)), dtype=np.float32) / 255.0
        rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    x0, y0 = t.x - pad, t.y - pad
    # intersection of the (padded) patch with the canvas
    cx1, cy1, cx2, cy2 = max(x0, 0), max(y0, 0), min(x0 + w + 2 * pad, W), min(y0 + h + 2 * pad, H)
    out = background.copy()
    if cx1 < cx2 and cy1 < cy2:
        a = alpha[cy1 - y0:cy2 - y0, cx1 - x0:cx2 - x0, None]
        src = rgb[cy1 - y0:cy2 - y0, cx1 - x0:cx2 - x0].astype(np.float32)
        dst = out[cy1:cy2, cx1:cx2].astype(np.float32)
        out[cy1:cy2, cx1:cx2] = np.clip(dst + (src - dst) * a + 0.5, 0, 255).astype(np.uint8)
    # box and visible fraction from the binary (unfeathered) mask
    bx1, by1, bx2, by2 = max(t.x, 0), max(t.y, 0), min(t.x + w, W), min(t.y + h, H)
    inside = binary[by1 - t.y:by2 - t.y, bx1 - t.x:bx2 - t.x] if bx1 < bx2 and by1 < by2 else binary[:0, :0]
    visible = float(inside.sum()) / float(binary.sum())
    box = None
    if inside.any():
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        box = [int(bx1 + cols[0]), int(by1 + rows[0]), int(bx1 + cols[-1] + 1), int(by1 + rows[-1] + 1)]
    return out, box, {"transform": asdict(t), "visible": visible}


def _sample_range(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(r[0]) if r[0] == r[1] else float(rng.uniform(r[0], r[1]))


def _place(rng: np.random.Generator, binary: np.ndarray, W: int, H: int, params: PasteParams) -> tuple[int, int]:
    """Top-left position of the patch: fully inside, or shifted over one border so that about a target
    fraction of the mask stays visible (exactly computed from the mask's row/column profile)."""
    h, w = binary.shape

    def inside(n: int, size: int) -> int:
        return int(rng.integers(0, size - n + 1)) if size >= n else (size - n) // 2

    if rng.random() >= params.truncation_prob:
        return inside(w, W), inside(h, H)
    target = _sample_range(rng, params.visible)
    side = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom
    profile = binary.sum(axis=0 if side < 2 else 1).astype(np.float64)
    if side in (1, 3):
        profile = profile[::-1]
    kept = 1.0 - np.cumsum(profile) / profile.sum()  # kept[d - 1]: visible fraction once d lines are cut
    d = int(np.searchsorted(-kept, -target)) + 1  # fewest cut lines leaving <= target visible
    d = min(d, len(profile) - 1)
    if side == 0:
        return -d, inside(h, H)
    if side == 1:
        return W - (w - d), inside(h, H)
    if side == 2:
        return inside(w, W), -d
    return inside(w, W), H - (h - d)


def sample_transform(rng: np.random.Generator, obj: ObjectInstance, canvas_hw: tuple[int, int],
                     params: PasteParams) -> PasteTransform:
    """Draw the geometry and colour of a paste (the position is drawn in ``paste``, which needs the
    rotated mask); returns a transform with ``x = y = 0``."""
    H, W = canvas_hw
    oh, ow = obj.mask.shape
    s = _sample_range(rng, params.scale)
    f = s / max(ow / W, oh / H)
    width, height = max(2, round(ow * f)), max(2, round(oh * f))
    angle = _sample_range(rng, params.rotation) * (1 if rng.random() < 0.5 else -1)
    flip = bool(rng.random() < params.flip_prob)
    hue = _sample_range(rng, params.hue) * (1 if rng.random() < 0.5 else -1)
    return PasteTransform(width, height, round(angle, 4), flip, round(_sample_range(rng, params.brightness), 4),
                          round(_sample_range(rng, params.contrast), 4),
                          round(_sample_range(rng, params.saturation), 4),
                          round(hue, 4), 0, 0, float(params.feather))


def paste(background: np.ndarray, obj: ObjectInstance, rng: np.random.Generator,
          params: PasteParams | str = "easy") -> tuple[np.ndarray, Box | None, dict[str, Any]]:
    """Paste ``obj`` on ``background`` (h, w, 3 uint8) with a transform drawn from ``params`` (or a preset name).

    Returns ``(image, box, info)``: the new image, the pasted box ``[x1, y1, x2, y2]`` (clipped, exclusive
    end; ``None`` if nothing is visible) and ``info`` with the ``transform`` used (replay it with ``compose``)
    and the ``visible`` fraction of the object's pixels inside the canvas.
    """
    if isinstance(params, str):
        if params not in PRESETS:
            raise ValueError(f"unknown paste preset {params!r}; choose one of {sorted(PRESETS)} or pass PasteParams")
        params = PRESETS[params]
    H, W = background.shape[:2]
    t = sample_transform(rng, obj, (H, W), params)
    rgb, alpha, binary = _geometry(obj, t)
    x, y = _place(rng, binary, W, H, params)
    t = PasteTransform(**{**asdict(t), "x": x, "y": y})
    return _blend(background, rgb, alpha, binary, t)
