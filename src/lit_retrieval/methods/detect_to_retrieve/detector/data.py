"""Data of the landmark box detector (Teichmann et al., "Detect-to-Retrieve", CVPR 2019, Sec. 3).

The detector is class-agnostic: every box is a "landmark" (label 1; torchvision keeps 0 for the background).
Three box sources share one interface (``len``, ``keys``, ``load(i) -> (image, boxes, key)``, ``boxes(i)``,
``describe()``):

* ``CocoBoxes``: any COCO-format detection set; every non-crowd annotation is a box.
* ``LandmarkBoxesCSV``: the Google Landmark Boxes CSV (``id,box`` with normalised ``ymin xmin ymax xmax``).
* ``SyntheticBoxes``: one cut-and-paste object (the "landmark") per image, on a background, with the box of
  ``synthetic.compositor.paste``; split, paste ranges and per-item seeding as in ``data.pairs``.

Conventions: images are ``(H, W, 3)`` uint8 RGB numpy arrays; boxes are float32 ``(n, 4)``
``[x1, y1, x2, y2]`` in pixels of that image with ``x2``/``y2`` exclusive (the compositor's PIL crop
convention: a box ``[0, 0, W, H]`` is the whole image); an image may have no box (a negative).
``DetectionDataset`` turns a source into torchvision's detection format and ``BoxesDataModule`` builds the
training and validation sets from ``conf/data/synthetic_boxes.yaml``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import Dataset

from ....boxes import Boxes, convert
from ....data.classification import limit_samples
from ....data.features import CachedItems, FeatureStore, feature_options, fill_store, model_encoder
from ....data.errors import DataError, ImageLoadError
from ....data.images import load_image
from ....data.paste import (BACKGROUNDS_DEFAULTS, GALLERY_JITTER, MAX_PASTE_TRIES, OBJECTS_DEFAULTS, SPLIT_DEFAULTS,
                          TRAIN_PART, VAL_PART, BackgroundSubset, SeededSplitLoaders, PastedItems, _options, lru,
                          make_backgrounds, make_objects, paste_params, split_sources)
from ....data.paste import PASTE_DEFAULTS as PAIRS_PASTE_DEFAULTS
from ....data.synthetic.backgrounds import BackgroundSource
from ....data.synthetic.benchmark import split_by_image
from ....data.synthetic.compositor import PasteParams, paste
from ....data.synthetic.objects import ObjectInstance, ObjectSource, ObjectSubset

log = logging.getLogger(__name__)

LANDMARK_LABEL = 1  # the one foreground class; torchvision detectors keep label 0 for the background
SOURCE_KINDS = ("synthetic", "coco", "gld_csv")
#: keys of one set of boxes on disk (``data.source``, ``data.source.train``, ``data.source.val``)
SET_KEYS = ("dir", "json", "images", "csv", "categories", "min_size", "skip_empty")
SET_DEFAULTS: dict[str, Any] = {"dir": None, "json": None, "images": None, "csv": None, "categories": None,
                                "min_size": 1, "skip_empty": False}
SOURCE_DEFAULTS: dict[str, Any] = {"kind": "synthetic", "train": None, "val": None, **SET_DEFAULTS}
#: the paste ranges of the boxes: landmarks are prominent (larger than the pairs' objects) and upright
PASTE_DEFAULTS: dict[str, Any] = {**PAIRS_PASTE_DEFAULTS, "scale": (0.25, 0.8), "rotation": (0.0, 10.0)}
GLD_SUFFIX = ".jpg"
_EXTRA_TAG = 2  # the extra objects of item i come from default_rng([seed, (epoch,) i, _EXTRA_TAG])
_FLIP_TAG = 1  # the flip of item i comes from default_rng([seed, epoch, i, _FLIP_TAG]): apart from the paste's
_FIX_COCO = ("point {where}.dir at a COCO folder (annotations/instances.json + images/), e.g. "
             "{where}.dir=${{paths.shared_dir}}/coco128, or give {where}.json (the annotation file) and "
             "{where}.images (the image folder)")
_FIX_CSV = ("point {where}.csv at a Google Landmark Boxes CSV (header id,box; box: normalised "
            "'ymin xmin ymax xmax' groups) and {where}.images at its images (<id>.jpg or <a>/<b>/<c>/<id>.jpg)")


# ----------------------------------------------------------------------------------------------- helpers

class BoxSource(Protocol):
    """What ``DetectionDataset`` needs: indexed images with their boxes (xyxy pixels, exclusive end)."""

    @property
    def keys(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]: ...

    def boxes(self, index: int) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def _check_index(index: int, n: int, what: str = "image") -> int:
    index = int(index)
    if not 0 <= index < n:
        raise IndexError(f"{what} {index} out of range [0, {n})")
    return index


def _clip(boxes: np.ndarray, height: int, width: int, min_size: float) -> np.ndarray:
    """Boxes clipped to the image, keeping those at least ``min_size`` px (and more than 0) wide and high."""
    b = Boxes.of(np.asarray(boxes, dtype=np.float32), size=(height, width)).clipped().numpy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return b[(w >= min_size) & (h >= min_size) & (w > 0) & (h > 0)]


def _covers(a: Sequence[float], b: Sequence[float], limit: float) -> bool:
    """Whether boxes ``a`` and ``b`` (xyxy) overlap by more than ``limit`` of the area of either."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return False
    area = lambda r: max(r[2] - r[0], 1e-9) * max(r[3] - r[1], 1e-9)  # noqa: E731
    return w * h > limit * min(area(a), area(b))


class BoxSubset(BackgroundSubset):
    """A view of a box source restricted to some of its images (one side of a split, or a limit): ``data.pairs``'
    ``BackgroundSubset`` (keys, length, ``load``) with the boxes.

    Args:
        base: the whole source.
        indices: positions in ``base`` kept, in this order.
    """

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        return self.base.load(self.indices[_check_index(index, len(self))])

    def boxes(self, index: int) -> np.ndarray:
        return self.base.boxes(self.indices[_check_index(index, len(self))])

    def count(self, index: int) -> int:
        return self.base.count(self.indices[_check_index(index, len(self))])  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        info = {**self.base.describe(), "subset": len(self.indices)}
        if hasattr(self.base, "count"):
            info["n_boxes"] = int(sum(self.base.count(i) for i in self.indices))
        return info


# ----------------------------------------------------------------------------------------------- COCO

def _coco_paths(root_or_json: str | Path, images_dir: str | Path | None) -> tuple[Path, Path]:
    """(annotation file, image folder) of a COCO folder (``annotations/instances.json`` + ``images/``) or of
    an annotation file (images in ``images_dir``, else ``<json>/../../images`` or ``<json>/../images``)."""
    given = Path(root_or_json)
    if given.is_dir():
        return given / "annotations" / "instances.json", Path(images_dir) if images_dir else given / "images"
    if images_dir is not None:
        return given, Path(images_dir)
    guesses = [given.parent.parent / "images", given.parent / "images"]
    return given, next((g for g in guesses if g.is_dir()), guesses[0])


def _read_coco(ann_file: Path) -> Any:
    """The pycocotools ``COCO`` of ``ann_file`` (its prints silenced)."""
    from pycocotools.coco import COCO

    fix = "give a COCO instances JSON (the official instances_*.json layout: images, annotations, categories)"
    if not ann_file.is_file():
        raise DataError("COCO annotation file not found", ann_file, fix)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
    except (OSError, ValueError, AssertionError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise DataError(f"cannot read the COCO annotations: {type(err).__name__}: {err}", ann_file, fix) from err
    if not isinstance(coco.dataset.get("images"), list) or not isinstance(coco.dataset.get("annotations"), list):
        raise DataError("COCO annotation file has no 'images' and 'annotations' lists", ann_file, fix)
    return coco


class CocoBoxes:
    """Class-agnostic boxes of a COCO-format detection set.

    Every non-crowd annotation (of ``categories`` if given) is a box: ``bbox`` ``[x, y, w, h]`` becomes
    ``[x, y, x + w, y + h]``, clipped to the image; boxes under ``min_size`` px wide or high are dropped.
    Images are ordered by COCO image id; those without boxes are kept as negatives unless ``skip_empty``.

    Args:
        root_or_json: a COCO folder (``annotations/instances.json`` + ``images/``) or an annotation file.
        images_dir: the image folder (default: ``<root>/images``, or ``images/`` next to the annotation folder).
        min_size: smallest kept box side, px.
        categories: category names to keep (``None``: all).
        skip_empty: drop images without boxes.

    Raises:
        DataError: missing or malformed annotation file, unknown category, missing image folder or files.
    """

    def __init__(self, root_or_json: str | Path, images_dir: str | Path | None = None, min_size: float = 1,
                 categories: Sequence[str] | None = None, skip_empty: bool = False) -> None:
        self.ann_file, self.image_dir = _coco_paths(root_or_json, images_dir)
        self.min_size, self.skip_empty = float(min_size), bool(skip_empty)
        self.categories = None if categories is None else [str(c) for c in categories]
        coco = _read_coco(self.ann_file)
        if not self.image_dir.is_dir():
            raise DataError("COCO image folder not found", self.image_dir,
                            "pass the folder holding the file_name entries of the annotation file (images_dir)")
        cat_ids = self._category_ids(coco)
        self.image_ids: list[int] = []
        self.files: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        self._boxes: list[np.ndarray] = []
        for image_id in sorted(coco.getImgIds()):
            self._add(coco, image_id, cat_ids)
        absent = [p for p in self.files if not p.is_file()]
        if absent:
            raise DataError(f"{len(absent)} image(s) listed in {self.ann_file} are missing, e.g. "
                            f"{[str(p) for p in absent[:3]]}", self.image_dir,
                            "copy them there or remove their entries from the annotation file")

    def _category_ids(self, coco: Any) -> set[int] | None:
        if self.categories is None:
            return None
        by_name = {c.get("name", str(c["id"])): int(c["id"]) for c in coco.dataset.get("categories", [])}
        unknown = sorted(set(self.categories) - set(by_name))
        if unknown:
            raise DataError(f"unknown COCO categories {unknown}", self.ann_file,
                            f"choose among {sorted(by_name)[:20]}{' ...' if len(by_name) > 20 else ''}")
        return {by_name[c] for c in self.categories}

    def _add(self, coco: Any, image_id: int, cat_ids: set[int] | None) -> None:
        info = coco.imgs[image_id]
        try:
            file_name, height, width = info["file_name"], int(info["height"]), int(info["width"])
            anns = [a for a in coco.imgToAnns[image_id]
                    if not a.get("iscrowd", 0) and (cat_ids is None or a["category_id"] in cat_ids)]
            boxes = convert(np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4), "xywh", "xyxy")
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"image {image_id} or one of its annotations is malformed ({type(err).__name__}: {err})",
                            self.ann_file, "every image needs file_name/height/width and every annotation a "
                            "[x, y, w, h] bbox and a category_id") from err
        boxes = _clip(boxes, height, width, self.min_size)
        if self.skip_empty and not len(boxes):
            return
        self.image_ids.append(int(image_id))
        self.files.append(self.image_dir / file_name)
        self.sizes.append((height, width))
        self._boxes.append(boxes)

    @property
    def keys(self) -> list[str]:
        return [str(p) for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def count(self, index: int) -> int:
        return len(self._boxes[_check_index(index, len(self))])

    def boxes(self, index: int) -> np.ndarray:
        """Boxes of image ``index`` (from the annotations: no image is read)."""
        return self._boxes[_check_index(index, len(self))].copy()

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image, boxes, path)`` of image ``index``; the decoded size must match the annotated one."""
        index = _check_index(index, len(self))
        path = self.files[index]
        image = np.asarray(load_image(path))
        if image.shape[:2] != self.sizes[index]:
            h, w = self.sizes[index]
            raise DataError(f"image is {image.shape[1]}x{image.shape[0]} but {self.ann_file} says {w}x{h}", path,
                            "the image file does not match its annotation: replace it or fix width/height")
        return image, self._boxes[index].copy(), str(path)

    def describe(self) -> dict[str, Any]:
        return {"kind": "coco", "ann_file": str(self.ann_file), "image_dir": str(self.image_dir),
                "categories": self.categories, "min_size": self.min_size, "skip_empty": self.skip_empty,
                "n_images": len(self), "n_boxes": int(sum(len(b) for b in self._boxes))}


# ---------------------------------------------------------------------------------- Google Landmark Boxes

def parse_box_field(text: str) -> np.ndarray:
    """A ``box`` field (groups of 4 normalised ``ymin xmin ymax xmax``, space-separated) as ``(n, 4)`` float32.

    Raises:
        ValueError: not numbers, not a multiple of 4, outside [0, 1], or empty extent (``min >= max``).
    """
    values = np.array(text.split(), dtype=np.float64)  # ValueError on non-numbers
    if len(values) % 4:
        raise ValueError(f"{len(values)} numbers, not groups of 4 (ymin xmin ymax xmax)")
    boxes = values.reshape(-1, 4)
    if not np.isfinite(boxes).all() or (boxes < -1e-6).any() or (boxes > 1 + 1e-6).any():
        raise ValueError(f"coordinates must be normalised to [0, 1], got {boxes.tolist()}")
    if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise ValueError(f"need ymin < ymax and xmin < xmax, got {boxes.tolist()}")
    return boxes.clip(0, 1).astype(np.float32)


def gld_image_candidates(images_dir: Path, image_id: str) -> list[Path]:
    """Where the image of ``image_id`` may be: ``<dir>/<id>.jpg``, then the GLD ``<dir>/<a>/<b>/<c>/<id>.jpg``."""
    flat = images_dir / f"{image_id}{GLD_SUFFIX}"
    if len(image_id) < 3:
        return [flat]
    return [flat, images_dir / image_id[0] / image_id[1] / image_id[2] / f"{image_id}{GLD_SUFFIX}"]


def _read_box_csv(path: Path) -> OrderedDict[str, list[np.ndarray]]:
    """Normalised boxes per id, ids in order of first appearance (several rows of one id are concatenated)."""
    fix = "the file needs a header 'id,box' and one row per image (box: space-separated 'ymin xmin ymax xmax' groups)"
    if not path.is_file():
        raise DataError("Google Landmark Boxes CSV not found", path, fix)
    per_id: OrderedDict[str, list[np.ndarray]] = OrderedDict()
    with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a byte-order mark is not part of "id"
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"id", "box"} <= {n.strip() for n in reader.fieldnames}:
            raise DataError(f"CSV header is {reader.fieldnames}, not id,box", path, fix)
        for row in reader:
            row = {(k or "").strip(): v for k, v in row.items()}
            image_id, line = (row.get("id") or "").strip(), reader.line_num
            if not image_id or any(c in image_id for c in "/\\") or image_id.startswith("."):
                raise DataError(f"line {line}: bad image id {image_id!r}", path, "ids are file stems without folders")
            try:
                boxes = parse_box_field(row.get("box") or "")
            except ValueError as err:
                raise DataError(f"line {line} (id {image_id}): {err}", path, fix) from err
            per_id.setdefault(image_id, []).append(boxes)
    return per_id


class LandmarkBoxesCSV:
    """Boxes of the Google Landmark Boxes dataset (Teichmann et al.).

    The CSV has a header ``id,box``; ``box`` holds groups of 4 normalised ``ymin xmin ymax xmax`` in
    [0, 1], space-separated; an id may have several groups in one row, several rows, or an empty ``box``
    (a negative). Boxes become pixels of the image: ``[xmin W, ymin H, xmax W, ymax H]``. The image of an id
    is ``images_dir/<id>.jpg`` or, in the GLD layout, ``images_dir/<id[0]>/<id[1]>/<id[2]>/<id>.jpg``.

    Raises:
        DataError: missing or malformed CSV (naming the line), or an image found in neither place.
    """

    def __init__(self, csv_path: str | Path, images_dir: str | Path) -> None:
        self.csv_path, self.images_dir = Path(csv_path), Path(images_dir)
        per_id = _read_box_csv(self.csv_path)
        if not self.images_dir.is_dir():
            raise DataError("Google Landmark Boxes image folder not found", self.images_dir,
                            "point images_dir at the folder of <id>.jpg (or <a>/<b>/<c>/<id>.jpg) files")
        self.ids: list[str] = list(per_id)
        self._normalised = [np.concatenate(groups).reshape(-1, 4) for groups in per_id.values()]
        self.files = [self._find(i) for i in self.ids]

    def _find(self, image_id: str) -> Path:
        candidates = gld_image_candidates(self.images_dir, image_id)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"image of id {image_id} (listed in {self.csv_path}) not found at "
                            f"{' or '.join(str(p) for p in candidates)}", candidates[0],
                            "download the image there or remove its rows from the CSV")
        return found

    @property
    def keys(self) -> list[str]:
        return list(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def count(self, index: int) -> int:
        return len(self._normalised[_check_index(index, len(self))])

    def normalised(self, index: int) -> np.ndarray:
        """The CSV boxes of image ``index``: ``(n, 4)`` ``[ymin, xmin, ymax, xmax]`` in [0, 1]."""
        return self._normalised[_check_index(index, len(self))].copy()

    def _pixels(self, index: int, height: int, width: int) -> np.ndarray:
        scale = np.array([width, height, width, height], dtype=np.float32)
        return self._normalised[index][:, [1, 0, 3, 2]] * scale

    def boxes(self, index: int) -> np.ndarray:
        """Pixel boxes of image ``index`` (only the image header is read, for its size)."""
        index = _check_index(index, len(self))
        path = self.files[index]
        try:
            with Image.open(path) as im:
                width, height = im.size
        except OSError as err:
            raise ImageLoadError(f"cannot read the image size: {err}", path, "re-download or remove it") from err
        return self._pixels(index, height, width)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        index = _check_index(index, len(self))
        image = np.asarray(load_image(self.files[index]))
        return image, self._pixels(index, *image.shape[:2]), self.ids[index]

    def describe(self) -> dict[str, Any]:
        return {"kind": "gld_csv", "csv": str(self.csv_path), "images": str(self.images_dir),
                "n_images": len(self), "n_boxes": int(sum(len(b) for b in self._normalised))}


# ----------------------------------------------------------------------------------------------- synthetic

class SyntheticBoxes(PastedItems):
    """One cut-and-paste object (the "landmark") per image, on a background, boxed by the compositor.

    Item ``i`` is synthesis ``i % syntheses`` of object ``i // syntheses`` (of ``objects.refs``): a random
    background, its long side resized to a random value in ``[image_size, 1.25 image_size]`` and randomly
    cropped to at most ``image_size`` x ``image_size`` (so the long side is ``image_size``, the aspect
    ratio roughly kept), then the object pasted with ``compositor.paste``; the box is the pasted box.
    Every random choice of item ``i`` comes from ``default_rng([seed, epoch, i])`` (``[seed, i]`` without
    resampling), as in ``data.pairs``.

    Args:
        objects: the objects (e.g. a part of ``pairs.split_sources``); decoded lazily.
        backgrounds: the backgrounds (e.g. a part of ``pairs.split_sources``).
        syntheses: images per object and epoch.
        image_size: long side of the images.
        paste: paste ranges (``PasteParams``, a ``data.paste`` mapping over ``PASTE_DEFAULTS``, or a preset).
        seed, resample: see above.
        cache_size: decoded objects kept per process.
        split: how these objects and backgrounds were chosen, for ``describe``.
        pastes: ``(lo, hi)``: each image holds a random number of objects in ``[lo, hi]``, its own object first,
            then others of ``objects`` drawn at random (in the lower half of the scale range), each placed where
            it covers at most ``MAX_COVER`` of an earlier box and is at most that covered by it (an object that
            finds no such place in ``MAX_PASTE_TRIES`` pastes is left out), so that every box stays visible.
    """

    POOL_KIND = "synthetic-boxes"
    MAX_COVER = 0.25  # largest fraction of a box's area another pasted box of the same image may cover

    def __init__(self, objects: ObjectSource, backgrounds: BackgroundSource, syntheses: int = 1,
                 image_size: int = 384, paste: PasteParams | Mapping[str, Any] | str | None = None, seed: int = 0,
                 resample: bool = True, cache_size: int = 64, split: Mapping[str, Any] | None = None,
                 pastes: Sequence[int] = (1, 1)) -> None:
        if syntheses < 1 or image_size < 16 or cache_size < 0:
            raise ValueError(f"need syntheses >= 1, image_size >= 16 and cache_size >= 0, got syntheses={syntheses}, "
                             f"image_size={image_size}, cache_size={cache_size}")
        lo, hi = (int(v) for v in pastes)
        if not 1 <= lo <= hi:
            raise ValueError(f"data.pastes={list(pastes)}: need [lo, hi] objects per image with 1 <= lo <= hi")
        self._init_items(objects, backgrounds, syntheses, seed, resample, cache_size, split)
        self.image_size = int(image_size)
        self.paste_params = box_paste_params(paste)
        self.pastes = (lo, hi)

    @property
    def keys(self) -> list[str]:
        """``<object source>#<synthesis>``: the items of one object share their source image."""
        return [f"{r.source}#{s}" for r in self.refs for s in range(self.syntheses)]

    def instance(self, k: int) -> ObjectInstance:
        """Object ``k`` decoded, from the per-process LRU cache."""
        return lru(self._cache, k, lambda: self.objects.load(self.refs[k]), self.cache_size)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        size = self.image_size
        image = self.backgrounds.load(int(rng.integers(self.n_backgrounds)))
        side = int(rng.integers(size, max(size, math.floor(GALLERY_JITTER * size)) + 1))
        h, w = image.shape[:2]
        new_w, new_h = max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w)))
        crop_w, crop_h = min(new_w, size), min(new_h, size)
        x, y = int(rng.integers(new_w - crop_w + 1)), int(rng.integers(new_h - crop_h + 1))
        resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
        return np.asarray(resized.crop((x, y, x + crop_w, y + crop_h)))

    def background(self, index: int) -> np.ndarray:
        """The image of item ``index`` (current epoch) before the paste."""
        return self._background(self.rng(_check_index(index, len(self), "item")))

    def synthesize(self, index: int) -> tuple[np.ndarray, list[int], dict[str, Any]]:
        """``(image, box, info)`` of item ``index`` with its own object only: ``paste``'s output
        (``info["transform"]`` replays it).

        Raises:
            DataError: the object was not visible after ``MAX_PASTE_TRIES`` pastes.
        """
        index = _check_index(index, len(self), "item")
        rng = self.rng(index)
        image, box, info = self._paste(self._background(rng), index // self.syntheses, rng)
        return image, box, info

    def _paste(self, background: np.ndarray, k: int, rng: np.random.Generator,
               avoid: Sequence[Sequence[int]] = ()) -> tuple[np.ndarray, list[int] | None, dict[str, Any]]:
        """Object ``k`` pasted on ``background`` where it is visible (and, given ``avoid``, overlaps none of those
        boxes by more than ``MAX_COVER``); ``avoid`` given, ``(background, None, {})`` when no paste fits. Extra
        objects (``avoid`` given) are drawn in the lower half of the scale range, so that they find room."""
        instance, params = self.instance(k), self.paste_params
        if avoid:
            lo, hi = params.scale
            params = replace(params, scale=(lo, (lo + hi) / 2))
        for _ in range(MAX_PASTE_TRIES):
            image, box, info = paste(background, instance, rng, params)
            if box is not None and not any(_covers(box, other, self.MAX_COVER) for other in avoid):
                return image, box, info
        if avoid:
            return background, None, {}
        raise DataError(f"pasting object {self.refs[k].ann_id} left nothing visible {MAX_PASTE_TRIES} times",
                        self.refs[k].source, "lower data.paste.truncation_prob or raise data.paste.visible")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, box, _info = self.synthesize(index)
        k, s = divmod(int(index), self.syntheses)
        boxes = [box]
        lo, hi = self.pastes
        if hi > 1:  # more objects, from a generator of their own (the first paste stays what synthesize gives)
            rng = self._extra_rng(index)
            n = int(rng.integers(lo, hi + 1)) - 1
            others = [j for j in range(len(self.refs)) if j != k]
            for j in (rng.choice(others, size=min(n, len(others)), replace=False) if others and n > 0 else []):
                image, extra, _ = self._paste(image, int(j), rng, avoid=boxes)
                if extra is not None:
                    boxes.append(extra)
        return image, np.asarray(boxes, dtype=np.float32), f"{self.refs[k].source}#{s}"

    def _extra_rng(self, index: int) -> np.random.Generator:
        seq = [self.seed, self.epoch, int(index), _EXTRA_TAG] if self.resample else [self.seed, int(index), _EXTRA_TAG]
        return np.random.default_rng(seq)

    def boxes(self, index: int) -> np.ndarray:
        """The boxes of item ``index`` (the image is composed to know them)."""
        return self.load(index)[1]

    def count(self, index: int) -> int:
        _check_index(index, len(self), "item")
        return 1 if self.pastes[1] == 1 else len(self.boxes(index))

    def describe(self) -> dict[str, Any]:
        return {"kind": "synthetic", "objects": self.objects.describe(), "backgrounds": self.backgrounds.describe(),
                "n_objects": len(self.refs), "n_backgrounds": self.n_backgrounds, "syntheses": self.syntheses,
                "n_images": len(self), "pastes": list(self.pastes), "image_size": self.image_size, "seed": self.seed,
                "resample": self.resample, "split": dict(self.split),
                "paste": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.paste_params).items()}}


def box_paste_params(spec: PasteParams | Mapping[str, Any] | str | None = None) -> PasteParams:
    """``PasteParams`` from ``data.paste`` (``PASTE_DEFAULTS`` of the boxes updated by the given keys), a
    preset name, or as is."""
    if isinstance(spec, (PasteParams, str)):
        return paste_params(spec)
    given = dict(spec or {})
    known = {f.name for f in fields(PasteParams)}
    if set(given) - known:
        raise ValueError(f"unknown data.paste keys {sorted(set(given) - known)}; known: {sorted(known)}")
    return paste_params({**PASTE_DEFAULTS, **given})


# ----------------------------------------------------------------------------------------------- dataset

def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 to a contiguous ``3 x H x W`` float32 tensor in [0, 1]."""
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:  # decoded PIL images are read-only: torch wants memory it may write
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0).contiguous()


class DetectionDataset(Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """A box source in torchvision's detection format.

    Item ``i``: ``(image 3 x H x W float32 in [0, 1], {"boxes": float32 (n, 4) xyxy pixels, "labels": int64 (n,)
    all LANDMARK_LABEL, "image_id": i})``. When ``train``, the image and its boxes are flipped horizontally
    with probability ``hflip_prob``, drawn from ``default_rng([seed, epoch, i, 1])``.

    Args:
        source: a box source (``CocoBoxes``, ``LandmarkBoxesCSV``, ``SyntheticBoxes``, ``BoxSubset``...).
        train: random flips (validation: never).
        hflip_prob: flip probability.
        seed: flip seed.
    """

    def __init__(self, source: BoxSource, train: bool, hflip_prob: float = 0.5, seed: int = 0) -> None:
        if not 0 <= hflip_prob <= 1:
            raise ValueError(f"hflip_prob must lie in [0, 1], got {hflip_prob}")
        self.source, self.train, self.hflip_prob = source, bool(train), float(hflip_prob)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the flips, forwarded to the source (new syntheses)."""
        self.epoch = int(epoch)
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.source)

    def flipped(self, index: int) -> bool:
        """Whether item ``index`` is flipped in the current epoch."""
        if not self.train or self.hflip_prob == 0:
            return False
        return bool(np.random.default_rng([self.seed, self.epoch, int(index), _FLIP_TAG]).random() < self.hflip_prob)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        index = _check_index(index, len(self))
        image, boxes, _key = self.source.load(index)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if self.flipped(index):
            image, boxes = image[:, ::-1], Boxes.of(boxes, size=image.shape[:2]).hflip().numpy()
        target = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes)),
                  "labels": torch.full((len(boxes),), LANDMARK_LABEL, dtype=torch.int64), "image_id": index}
        return image_to_tensor(image), target

    def ground_truth(self) -> list[tuple[int, np.ndarray]]:
        """``(image_id, boxes)`` of every item, unflipped (what validation sees)."""
        return [(i, np.asarray(self.source.boxes(i), dtype=np.float32).reshape(-1, 4)) for i in range(len(self))]

    def describe(self) -> dict[str, Any]:
        return {**self.source.describe(), "train": self.train, "hflip_prob": self.hflip_prob if self.train else 0.0}


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]
                      ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Images and targets as two lists (torchvision detection models take images of different sizes)."""
    return [image for image, _ in batch], [target for _, target in batch]


# ------------------------------------------------------------------------------------- frozen-feature pools

def _serve_boxes(levels: Sequence[str], train: bool, hflip_prob: float) -> Any:
    """What the detector's step receives from a stored item: ``({level: trunk map}, target)``; training targets
    are in resized pixels (the loss's), validation targets in pixels of the image (the detections')."""
    def serve(item: dict[str, Any], rng: np.random.Generator | None) -> tuple[dict[str, torch.Tensor], dict]:
        flip = train and rng is not None and hflip_prob > 0 and bool(rng.random() < hflip_prob)
        field = "flip" if flip else "image"
        maps = {lvl: torch.from_numpy(np.array(item[f"{field}.{lvl}"])) for lvl in levels}
        original, size = tuple(int(v) for v in item["original"]), tuple(int(v) for v in item["size"])
        boxes = Boxes.of(torch.from_numpy(np.array(item["boxes"][: int(item["n_boxes"])], dtype=np.float32)),
                         size=original)
        if flip:
            boxes = boxes.hflip()
        if train:
            boxes = boxes.resized(size)
        boxes = boxes.to()
        target = {"boxes": boxes, "labels": torch.full((len(boxes),), LANDMARK_LABEL, dtype=torch.int64),
                  "image_id": int(item["index"]), "image_size": size, "original_size": original}
        return maps, target

    return serve


def cached_boxes(source: SyntheticBoxes, encoder: Any, store: Mapping[str, Any], name: str, train: bool,
                 hflip_prob: float = 0.5, seed: int = 0) -> CachedItems:
    """The fixed pool of ``source`` with each image replaced by the frozen trunk maps of its detector input (and,
    for training with flips, of its flipped input: the map of a flipped image is not the flipped map), computed
    once into ``store["dir"]`` (see :mod:`lit_retrieval.data.features`); ``encoder``: the detector's
    :class:`~lit_retrieval.methods.detect_to_retrieve.detector.models.TrunkEncoder`."""
    if source.resample:
        raise ValueError("cached boxes need a fixed pool: build the SyntheticBoxes with resample=False")
    inputs = ("image", "flip") if train and hflip_prob > 0 else ("image",)
    levels = tuple(encoder.key()["levels"])
    fs = FeatureStore(store["dir"], {"pool": source.pool_key(), "encoder": encoder.key(), "inputs": list(inputs)},
                      len(source), [f"{i}.{lvl}" for i in inputs for lvl in levels], int(store["chunk_size"]),
                      str(store["dtype"]))

    def item(i: int) -> dict[str, Any]:
        image, boxes, _key = source.load(i)
        pixels, boxes = image_to_tensor(image), torch.from_numpy(np.asarray(boxes, np.float32)).reshape(-1, 4)
        x, _resized, size = encoder.prepare(pixels, boxes)
        padded = np.full((source.pastes[1], 4), np.nan, np.float32)  # one shape for every item of the store
        padded[: len(boxes)] = boxes.numpy()
        out = {"image": x, "boxes": padded, "n_boxes": np.int64(len(boxes)), "size": np.array(size, np.int64),
               "original": np.array(image.shape[:2], np.int64), "index": np.int64(i)}
        if "flip" in inputs:
            out["flip"] = encoder.prepare(pixels.flip(-1), Boxes.of(boxes, size=image.shape[:2]).hflip().to())[0]
        return out

    fill_store(fs, item, encoder, f"frozen trunk maps of the {name}", batch=8, inputs=inputs)
    out = CachedItems(fs, _serve_boxes(levels, train, hflip_prob), seed, random=train,
                      describe={**source.describe(), "hflip_prob": hflip_prob if train else 0.0})
    out.source = source  # what the items are made of (``content``), and the pixels for pictures
    return out


# -------------------------------------------------------------------------------------------- datamodule

def make_box_source(kind: str, spec: Mapping[str, Any], where: str = "data.source") -> CocoBoxes | LandmarkBoxesCSV:
    """The box set of ``spec`` (``SET_KEYS``): coco ``{dir}`` or ``{json, images}``; gld_csv ``{csv, images}``.

    Raises:
        DataError: what is missing or unreadable, with the config keys ``where.*`` to fix.
    """
    opts = _options(where.removeprefix("data."), spec, SET_DEFAULTS)
    if kind == "coco":
        fix = _FIX_COCO.format(where=where)
        target = opts["dir"] or opts["json"]
        if target is None or (opts["dir"] and opts["json"]):
            raise DataError(f"source.kind=coco needs exactly one of {where}.dir or {where}.json", None, fix)
        if not Path(target).exists():
            raise DataError("COCO set not found", target, fix)
        try:
            return CocoBoxes(target, opts["images"], min_size=opts["min_size"], categories=opts["categories"],
                             skip_empty=opts["skip_empty"])
        except DataError as err:
            raise DataError(err.what, err.file, f"{err.fix}; or {fix}") from err
    if kind == "gld_csv":
        fix = _FIX_CSV.format(where=where)
        if opts["csv"] is None or opts["images"] is None:
            raise DataError(f"source.kind=gld_csv needs {where}.csv and {where}.images", None, fix)
        try:
            return LandmarkBoxesCSV(opts["csv"], opts["images"])
        except DataError as err:
            raise DataError(err.what, err.file, f"{err.fix}; or {fix}") from err
    raise ValueError(f"data.source.kind must be one of {SOURCE_KINDS} for a box set, got {kind!r}")


class BoxesDataModule(SeededSplitLoaders, pl.LightningDataModule):
    """Training and validation ``DetectionDataset``s for the landmark box detector.

    ``source.kind``:

    * ``synthetic`` (default): ``objects`` on ``backgrounds`` (as in ``data.pairs``), split by source image
      with ``split`` (part 0 trains, part 1 validates, the others are never read); ``syntheses`` images per
      object and epoch, long side ``image_size``, pasted with ``paste`` (``PASTE_DEFAULTS`` updated).
    * ``coco``: a COCO detection set, ``source.dir`` (or ``source.json`` + ``source.images``), all non-crowd
      annotations (of ``source.categories``) as landmark boxes.
    * ``gld_csv``: a Google Landmark Boxes CSV, ``source.csv`` + ``source.images``.

    coco and gld_csv read either one set split by image with ``split`` (``source.dir``/``json``/``csv``...), or
    ``source.train`` and ``source.val`` (each a mapping of ``SET_KEYS``; missing keys come from ``source``).

    Args:
        source: ``{kind, train, val, dir, json, images, csv, categories, min_size, skip_empty}``.
        objects, backgrounds, split, syntheses, image_size, paste: see above.
        pastes: ``[lo, hi]`` objects per synthetic training image (``SyntheticBoxes``); validation images hold one,
            as the held-out benchmarks.
        hflip_prob: horizontal flips of training images (validation: none).
        batch_size, num_workers: loader settings (workers re-created every epoch).
        seed: shuffle, subset, synthesis and flip seed.
        resample: fresh synthetic training images every epoch (validation images never change).
        limit_train, limit_val: keep a seeded random subset of N objects (synthetic) or images (coco, gld_csv).

    Sharding under DDP is done by ``SeededShuffleSampler`` (``use_distributed_sampler=False``); the training
    loader drops the last incomplete batch.
    """

    collate_fn = staticmethod(collate_detection)  # torchvision detection batches: lists of images and targets

    def __init__(self, source: Mapping[str, Any] | None = None, objects: Mapping[str, Any] | None = None,
                 backgrounds: Mapping[str, Any] | None = None, split: Mapping[str, Any] | None = None,
                 syntheses: int = 4, image_size: int = 384, paste: Mapping[str, Any] | None = None,
                 hflip_prob: float = 0.5, batch_size: int = 4, num_workers: int = 0, seed: int = 0,
                 resample: bool = True, limit_train: int | None = None, limit_val: int | None = None,
                 features: str = "online", feature_store: Mapping[str, Any] | None = None,
                 pastes: Sequence[int] = (1, 1)) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.pastes = tuple(int(v) for v in pastes)
        if len(self.pastes) != 2 or not 1 <= self.pastes[0] <= self.pastes[1]:
            raise ValueError(f"data.pastes={list(pastes)}: need [lo, hi] objects per training image, 1 <= lo <= hi")
        self.source_spec = _options("source", source, SOURCE_DEFAULTS)
        self.kind = self.source_spec["kind"]
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"data.source.kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        self.features, self.store_opts = feature_options(features, feature_store)
        if self.features == "cached" and self.kind != "synthetic":
            raise ValueError(f"data.features=cached stores a fixed synthetic pool; data.source.kind={self.kind} reads "
                             "files. Fix: data.features=online (or data.source.kind=synthetic)")
        if self.features == "cached" and resample:
            log.info("data.features=cached: the training pool is fixed (%d images per object), not resampled every "
                     "epoch", syntheses)
            resample = False
        if self.kind == "synthetic":
            stray = [k for k in ("train", "val", "dir", "json", "csv", "images") if self.source_spec[k] is not None]
            if stray:
                raise ValueError(f"data.source.{stray[0]} is for source.kind=coco or gld_csv, not synthetic")
        self.objects_spec = _options("objects", objects, OBJECTS_DEFAULTS)
        self.backgrounds_spec = _options("backgrounds", backgrounds, BACKGROUNDS_DEFAULTS)
        split_opts = _options("split", split, SPLIT_DEFAULTS)
        self.fractions, self.split_seed = [float(f) for f in split_opts["fractions"]], int(split_opts["seed"])
        if len(self.fractions) < 2:
            raise ValueError(f"data.split.fractions needs at least 2 parts (train, val[, held out...]), "
                             f"got {self.fractions}")
        if batch_size < 1 or num_workers < 0 or syntheses < 1 or image_size < 16:
            raise ValueError(f"need batch_size >= 1, num_workers >= 0, syntheses >= 1 and image_size >= 16, got "
                             f"{batch_size}, {num_workers}, {syntheses}, {image_size}")
        self.paste_params = box_paste_params(paste)
        self.syntheses, self.image_size, self.hflip_prob = int(syntheses), int(image_size), float(hflip_prob)
        self.batch_size, self.num_workers, self.seed, self.resample = batch_size, num_workers, seed, resample
        self.limit_train, self.limit_val = limit_train, limit_val
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self._val_gt: list[tuple[int, np.ndarray]] | None = None

    # ---------------------------------------------------------------------------------------- building

    def _where(self) -> str:
        if self.kind == "synthetic":
            spec = self.objects_spec
            return spec["dir"] if spec["dir"] is not None else f"{spec['n']} procedural objects (seed {spec['seed']})"
        spec = self.source_spec
        return str(spec["dir"] or spec["json"] or spec["csv"] or "data.source.train")

    def _empty_part(self, part: int, noun: str, what: str) -> DataError:
        name = "training" if part == TRAIN_PART else "validation"
        return DataError(f"the {name} part (part {part} of data.split.fractions={self.fractions}) has no {noun}",
                         self._where(), f"add {what} or give part {part} a larger fraction in data.split.fractions")

    def _synthetic_sources(self) -> tuple[SyntheticBoxes, SyntheticBoxes]:
        objects, backgrounds = make_objects(self.objects_spec), make_backgrounds(self.backgrounds_spec)
        object_parts, background_parts = split_sources(objects, backgrounds, self.fractions, self.split_seed,
                                                       int(self.objects_spec["min_size"]),
                                                       str(self.objects_spec["per_image"]))
        for part in (TRAIN_PART, VAL_PART):
            counts = {"objects": len(object_parts[part].refs), "backgrounds": len(background_parts[part])}
            for noun, count in counts.items():
                if not count:
                    raise self._empty_part(part, noun, f"{noun} (more source images, or a larger data.{noun}.n)")
        sets = []
        for part, limit, resample in ((TRAIN_PART, self.limit_train, self.resample), (VAL_PART, self.limit_val, False)):
            refs = limit_samples(object_parts[part].refs, limit, self.seed)
            split = {"fractions": self.fractions, "seed": self.split_seed, "part": part, "limit": limit}
            sets.append(SyntheticBoxes(ObjectSubset(objects, tuple(refs)), background_parts[part],
                                       syntheses=self.syntheses, image_size=self.image_size, paste=self.paste_params,
                                       seed=self.seed, resample=resample, split=split,
                                       pastes=self.pastes if part == TRAIN_PART else (1, 1)))
        return sets[0], sets[1]

    def _limited(self, source: BoxSource, indices: Sequence[int], limit: int | None) -> BoxSubset:
        return BoxSubset(source, limit_samples(list(indices), limit, self.seed))

    def _file_sources(self) -> tuple[BoxSubset, BoxSubset]:
        spec = self.source_spec
        common = {k: spec[k] for k in SET_KEYS}
        if spec["train"] is not None or spec["val"] is not None:
            if spec["train"] is None or spec["val"] is None:
                raise ValueError("data.source.train and data.source.val go together (or give one set, split by image)")
            if not isinstance(spec["train"], Mapping) or not isinstance(spec["val"], Mapping):
                raise ValueError("data.source.train and data.source.val must be mappings, e.g. {dir: <COCO folder>} "
                                 "or {csv: <boxes.csv>, images: <folder>}")
            if any(spec[k] is not None for k in ("dir", "json", "csv")):
                raise ValueError("give either data.source.train/val or data.source.dir/json/csv (split by image)")
            train = make_box_source(self.kind, {**common, **dict(spec["train"])}, "data.source.train")
            val = make_box_source(self.kind, {**common, **dict(spec["val"])}, "data.source.val")
            return (self._limited(train, range(len(train)), self.limit_train),
                    self._limited(val, range(len(val)), self.limit_val))
        whole = make_box_source(self.kind, common)
        keys = list(whole.keys)
        parts = split_by_image(list(range(len(keys))), self.fractions, self.split_seed, key=keys.__getitem__)
        for part in (TRAIN_PART, VAL_PART):
            if not parts[part]:
                raise self._empty_part(part, "images", "images")
        return (self._limited(whole, parts[TRAIN_PART], self.limit_train),
                self._limited(whole, parts[VAL_PART], self.limit_val))

    def setup(self, stage: str | None = None) -> None:
        """Index the sources and split them (idempotent); images are decoded only when an item needs them.

        Raises:
            DataError: a missing or malformed source, an empty part, or no full training batch.
        """
        if self.train_set is not None:
            return
        train, val = self._synthetic_sources() if self.kind == "synthetic" else self._file_sources()
        if len(train) < self.batch_size:
            raise DataError(f"{len(train)} training images make no full batch of {self.batch_size} (the last "
                            "incomplete batch is dropped)", self._where(),
                            "lower data.batch_size, raise data.syntheses or data.limit_train, or add images")
        if self.features == "cached":
            encoder = model_encoder(self)
            self.train_set = cached_boxes(train, encoder, self.store_opts, "training boxes", True, self.hflip_prob,
                                          self.seed)
            self.val_set = cached_boxes(val, encoder, self.store_opts, "validation boxes", False, seed=self.seed)
        else:
            self.train_set = DetectionDataset(train, train=True, hflip_prob=self.hflip_prob, seed=self.seed)
            self.val_set = DetectionDataset(val, train=False, seed=self.seed)
        log.info("landmark boxes (%s): %d training images, %d validation images", self.kind, len(train), len(val))

    def val_ground_truth(self) -> list[tuple[int, np.ndarray]]:
        """``(image_id, boxes)`` of every validation image, in ``image_id`` order, for ``ap.coco_ap`` (computed
        once: synthetic validation images are composed to know their boxes)."""
        if self._val_gt is None:
            val = self._ready()[1]
            self._val_gt = DetectionDataset(val.source, train=False).ground_truth() if self.features == "cached" \
                else val.ground_truth()
        return [(i, b.copy()) for i, b in self._val_gt]

    def val_image(self, index: int) -> np.ndarray:
        """The pixels of validation image ``index`` (``H×W×3`` uint8), for pictures of cached validation items."""
        val = self._ready()[1]
        return val.source.load(index)[0]

    def describe(self) -> dict[str, Any]:
        """What is being trained on, for the logger."""
        train, val = self._ready()
        return {"kind": self.kind, "features": self.features, "train": train.describe(), "val": val.describe(),
                "n_train_images": len(train),
                "n_val_images": len(val), "batch_size": self.batch_size,
                "split": {"fractions": self.fractions, "seed": self.split_seed},
                "limit_train": self.limit_train, "limit_val": self.limit_val}


__all__ = ["BoxSource", "BoxSubset", "BoxesDataModule", "CocoBoxes", "DetectionDataset", "LANDMARK_LABEL",
           "LandmarkBoxesCSV", "PASTE_DEFAULTS", "SET_DEFAULTS", "SOURCE_DEFAULTS", "SOURCE_KINDS", "SyntheticBoxes",
           "box_paste_params", "cached_boxes", "collate_detection", "gld_image_candidates", "image_to_tensor",
           "make_box_source", "parse_box_field"]
