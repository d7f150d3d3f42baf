"""Robust image reading and cirtorch-compatible retrieval preprocessing.

Matches ``cirtorch.datasets.genericdataset.ImagesFromList`` + ``datahelpers`` (Radenović et al.):

* every image is read fully and converted to RGB (``pil_loader``);
* a database image is shrunk so that its long side is at most ``image_size``
  (``img.thumbnail((s, s), ANTIALIAS)``; ANTIALIAS is LANCZOS; never enlarged);
* a query with a box is cropped in original-image pixels first (``img.crop(bbx)``), then shrunk to
  ``image_size * max(crop.size) / max(original.size)``, so that the query keeps the scale it has in the
  full image at ``image_size``.

On top of cirtorch: every failure is an ``ImageLoadError`` / ``BoxError`` that names the file and the
fix, high bit-depth grey images are rescaled instead of clipped, EXIF orientation can be applied, and
``safe_load`` can skip (and report) unreadable images.
"""
from __future__ import annotations

import logging
import math
import os
import struct
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BoxError, ImageLoadError

logger = logging.getLogger("lit_retrieval.data")

PathLike = str | os.PathLike[str]
OnSkip = Callable[[Path, str], None]

#: how far (pixels) a query box may stick out of its image before it is rejected.
BOX_TOLERANCE = 1.0

_FIX_MISSING = "check dataset.root / the image list (file names and extension)"
_FIX_BAD_FILE = (
    "re-download or re-extract this image, remove it from the image list, "
    "or pass skip_bad_images=true so that unreadable images are skipped, reported and counted"
)
# What decoders raise on corrupt data: OSError ("image file is truncated", "broken data stream"),
# SyntaxError (broken PNG chunks), EOFError, ValueError / struct.error (bad headers).
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error)


def load_image(path: PathLike, exif_transpose: bool = False) -> Image.Image:
    """Read an image fully and return it as an RGB ``PIL.Image``.

    Modes: ``L``, ``LA``, ``P`` (with or without transparency), ``RGBA``, ``CMYK``... go through
    ``convert("RGB")`` as in cirtorch; alpha is dropped, not composited (the colour stored under
    transparent pixels is kept, as cirtorch does). 16-bit grey (``I;16*``) is scaled by 255/65535;
    ``I`` (32-bit int) and ``F`` (float) are kept if already in [0, 255] (``F`` in [0, 1] is scaled by
    255), otherwise scaled by 255/max; negatives and NaN become 0.

    Args:
        path: image file.
        exif_transpose: rotate/flip by the EXIF orientation tag. cirtorch does not (off by default):
            the benchmark boxes refer to the stored, un-rotated pixels.

    Raises:
        ImageLoadError: missing, empty, not an image, truncated/corrupt, too large or unsupported mode.
            (A truncated file loads, padded, only if someone set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.)
    """
    path = Path(path)
    _check_readable_file(path)
    try:
        with Image.open(path) as img:
            img.load()  # force the full decode now: truncation shows up here, not later
            if exif_transpose:
                img = _apply_exif_orientation(img, path)
            return _to_rgb(img, path)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("file is not an image PIL can read", path, _FIX_BAD_FILE) from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(
            f"image is too large to load safely: {err}",
            path,
            "if the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) before loading",
        ) from err
    except PermissionError as err:
        raise ImageLoadError("image file cannot be read: permission denied", path,
                             "fix the file permissions") from err
    except _DECODE_ERRORS as err:
        raise ImageLoadError(f"image data is truncated or corrupt ({err})", path, _FIX_BAD_FILE) from err


def resize_max(img: Image.Image, image_size: int | None) -> Image.Image:
    """Shrink a copy of ``img`` so that its long side is at most ``image_size`` (never enlarge).

    Exactly ``img.thumbnail((image_size, image_size), LANCZOS)`` (cirtorch ``imresize``): aspect ratio
    kept, each side at least 1 pixel. ``None`` returns an unchanged copy.
    """
    out = img.copy()
    if image_size is None:
        return out
    _check_image_size(image_size)
    out.thumbnail((image_size, image_size), Image.Resampling.LANCZOS)
    return out


def bbx_problem(bbx: object) -> str | None:
    """Why ``bbx`` is not a valid ``[x1, y1, x2, y2]`` box, or ``None`` if it is.

    Valid: 4 finite real numbers with ``x2 > x1`` and ``y2 > y1`` (image bounds are checked by
    ``crop_query``, which knows the image).
    """
    if isinstance(bbx, (str, bytes)) or not isinstance(bbx, (Sequence, np.ndarray)):
        return f"box {bbx!r} is not a sequence of 4 numbers [x1, y1, x2, y2]"
    values = bbx.tolist() if isinstance(bbx, np.ndarray) else list(bbx)
    if len(values) != 4:
        return f"box {bbx!r} has {len(values)} values, expected 4 [x1, y1, x2, y2]"
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            return f"box {bbx!r} has a non-numeric value {v!r}"
        if not math.isfinite(float(v)):
            return f"box {bbx!r} has a non-finite value"
    x1, y1, x2, y2 = (float(v) for v in values)
    if x2 <= x1 or y2 <= y1:
        return f"box {bbx!r} is empty or flipped (need x2 > x1 and y2 > y1)"
    return None


def crop_query(
    img: Image.Image,
    bbx: Sequence[float] | None,
    image_size: int | None,
    source: PathLike | None = None,
) -> Image.Image:
    """cirtorch query preprocessing: crop to ``bbx`` then shrink to keep the full-image scale.

    The crop is ``img.crop(bbx)`` (PIL rounds the coordinates); the crop is then shrunk with
    ``thumbnail`` to ``image_size * max(crop.size) / max(img.size)`` (a float, floored by PIL), as
    cirtorch does. That target is clamped to at least 1 pixel (cirtorch would crash on a tiny box).
    The box may stick out of the image by ``BOX_TOLERANCE`` pixels (PIL fills outside pixels with 0,
    as in cirtorch); more than that is an error. ``bbx=None`` is ``resize_max(img, image_size)``.

    Args:
        img: the full query image (already loaded, RGB).
        bbx: ``[x1, y1, x2, y2]`` in pixels of ``img``, or ``None``.
        image_size: long side of the full image after resizing; ``None`` crops without resizing.
        source: the query file, named in errors.

    Raises:
        BoxError: malformed box, box outside the image or cropping to less than one pixel.
    """
    if bbx is None:
        return resize_max(img, image_size)
    where = source if source is not None else "query image"
    problem = bbx_problem(bbx)
    if problem is not None:
        raise BoxError(problem, where, "fix the query box in the ground-truth file")
    x1, y1, x2, y2 = (float(v) for v in bbx)
    w, h = img.size
    tol = BOX_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
        raise BoxError(
            f"query box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {w}x{h} (WxH) image",
            where,
            "check that the ground truth belongs to these images (same dataset, full-resolution "
            "originals, exif_transpose off as the boxes refer to the stored pixels)",
        )
    box = (x1, y1, x2, y2)
    if round(x2) - round(x1) < 1 or round(y2) - round(y1) < 1:
        raise BoxError(f"query box {list(box)} is less than one pixel wide or high once rounded", where,
                       "fix the query box in the ground-truth file")
    crop = img.crop(box)
    if image_size is None:
        return crop
    _check_image_size(image_size)
    target = max(image_size * max(crop.size) / max(img.size), 1.0)
    crop.thumbnail((target, target), Image.Resampling.LANCZOS)
    return crop


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB ``PIL.Image`` as a contiguous ``3 x H x W`` float32 tensor in [0, 1].

    Same values as ``torchvision.transforms.functional.to_tensor`` (uint8 / 255), without importing
    torchvision.
    """
    if img.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {img.mode!r}; read it with load_image")
    arr = np.array(img, dtype=np.uint8, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div_(255.0)


def load_for_retrieval(
    path: PathLike,
    image_size: int | None,
    bbx: Sequence[float] | None = None,
    exif_transpose: bool = False,
) -> torch.Tensor:
    """Read, (crop,) resize as cirtorch does and return a ``3 x H x W`` tensor in [0, 1]."""
    img = load_image(path, exif_transpose=exif_transpose)
    return to_tensor(crop_query(img, bbx, image_size, source=path))


def safe_load(
    path: PathLike,
    image_size: int | None,
    bbx: Sequence[float] | None = None,
    *,
    exif_transpose: bool = False,
    skip_bad: bool = False,
    on_skip: OnSkip | None = None,
) -> torch.Tensor | None:
    """``load_for_retrieval`` that can skip unreadable images instead of failing.

    With ``skip_bad=False`` an ``ImageLoadError`` propagates. With ``skip_bad=True`` it is logged as a
    warning on the ``lit_retrieval.data`` logger (file and reason), ``on_skip(path, reason)`` is
    called so that the caller can count/record it, and ``None`` is returned. Box errors are never
    skipped: they are ground-truth errors, not bad images.
    """
    try:
        return load_for_retrieval(path, image_size, bbx, exif_transpose=exif_transpose)
    except ImageLoadError as err:
        if not skip_bad:
            raise
        logger.warning("skipping bad image %s: %s", os.fspath(path), err.what)
        if on_skip is not None:
            on_skip(Path(path), err.what)
        return None


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise ImageLoadError("image file not found", path, _FIX_MISSING)
    if not path.is_file():
        raise ImageLoadError("image path is not a regular file", path, _FIX_MISSING)
    if path.stat().st_size == 0:
        raise ImageLoadError("image file is empty (0 bytes)", path, _FIX_BAD_FILE)


def _apply_exif_orientation(img: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as err:
        raise ImageLoadError(
            f"EXIF metadata is corrupt, cannot apply its orientation ({err})",
            path,
            "load with exif_transpose=False, or strip/repair the EXIF block of this file",
        ) from err


def _check_image_size(image_size: object) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """Convert any PIL mode to RGB (see ``load_image`` for the rules)."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_high_depth_to_uint8(img)).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the direct P->RGB path warns for byte transparency
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ImageLoadError(
            f"image mode {mode!r} cannot be converted to RGB ({err})",
            path,
            "convert the image to a standard RGB JPEG/PNG, or remove it from the image list",
        ) from err


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """Grey ``I;16*`` / ``I`` / ``F`` pixels rescaled (not clipped) to uint8."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        scaled = arr / 257.0  # 65535 -> 255 exactly
    else:
        arr = np.clip(np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
        hi = float(arr.max()) if arr.size else 0.0
        if img.mode == "F" and hi <= 1.0:
            scaled = arr * 255.0
        elif hi <= 255.0:
            scaled = arr
        else:
            scaled = arr * (255.0 / hi)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
