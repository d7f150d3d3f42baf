"""Background sources: any image folder, or a subset of one. The procedural ones live in ``procedural``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

from .objects import load_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class BackgroundSource(Protocol):
    """Indexed backgrounds: ``keys[i]`` names background ``i`` (the unit of splits), ``load(i)`` reads it."""

    @property
    def keys(self) -> Sequence[str]: ...

    def load(self, index: int) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive; .jpg/.jpeg/.png, any case), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"background folder {root} does not exist; pass a folder of .jpg/.jpeg/.png images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFolderBackgrounds:
    """Backgrounds read from image files.

    Args:
        root: folder searched recursively, or ``None`` with explicit ``paths``.
        paths: the files to use instead of listing ``root`` (e.g. one side of ``split_by_image``).
        max_images: keep a deterministic random subset of this many files (``seed`` picks it).
        seed: seed of that subset.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        paths: Sequence[str | Path] | None = None,
        max_images: int | None = None,
        seed: int = 0,
    ) -> None:
        if (root is None) == (paths is None):
            raise ValueError("ImageFolderBackgrounds needs exactly one of root= (a folder) or paths= (a list of files)")
        self.root = Path(root) if root is not None else None
        files = list_images(root) if root is not None else [Path(p) for p in paths or []]
        if not files:
            raise FileNotFoundError(f"no .jpg/.jpeg/.png images found in {root or 'the given paths'}; add background "
                                    "images")
        if max_images is not None and max_images < len(files):
            keep = np.sort(np.random.default_rng(seed).choice(len(files), size=max_images, replace=False))
            files = [files[i] for i in keep]
        self.paths: list[Path] = files
        self.seed = seed

    @property
    def keys(self) -> list[str]:
        return [str(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        return load_rgb(self.paths[index])

    def describe(self) -> dict[str, Any]:
        return {"kind": "folder", "root": str(self.root) if self.root else None, "n": len(self.paths),
                "seed": self.seed}


def resize_long_side(image: np.ndarray, long_side: int | None) -> np.ndarray:
    """Resize (keeping aspect) so that the longer side is ``long_side`` px; ``None`` keeps the image."""
    if long_side is None:
        return image
    h, w = image.shape[:2]
    f = long_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if size == (w, h):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
